"""Circuits: task metrics (logit difference), activation / attribution / path patching, circuit
discovery, faithfulness and overlap between tasks. Imports ``workbench``; never imported by it."""
