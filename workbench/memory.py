"""The batch plan: how many prompts go into one forward pass when ``--batch-size`` is not given.

The estimate is deliberately simple and conservative. One prompt of ``seq`` tokens costs, at the
peak of one layer of the forward (activations of the model's dtype, ``a`` bytes each):

* residual-stream work: ``seq * (RESID_TENSORS * d_model + MLP_TENSORS * d_mlp) * a``;
* eager attention (the bridge's reimplementation): ``n_heads * seq^2 * (3 a + 4)`` bytes: the
  scores, the masked scores and the pattern in the model's dtype plus the fp32 softmax. The probes'
  own fp32 work on the pattern is done in query blocks of at most
  :data:`workbench.attention.QUERY_BLOCK_BYTES` and is not per prompt; sdpa attention adds nothing
  quadratic;
* logits, when a probe needs them: ``seq * vocab_size * (a + 4)`` (the model's dtype and an fp32
  copy).

The budget is :data:`SAFETY` times the memory free on the device after the model is loaded
(``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` on the CPU). On CUDA the batch size is the
largest power of two that fits, at most :data:`MAX_AUTO_BATCH`; on the CPU it stays the
workbench's default :data:`CPU_DEFAULT_BATCH` unless that does not fit (long prompts), in which case
it is the largest power of two that does. A power of two keeps the choice (and with it the run id)
stable against small changes in free memory. The plan is recorded in the run manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SAFETY = 0.7  # fraction of the free memory a batch may use
CPU_DEFAULT_BATCH = 8
MAX_AUTO_BATCH = 64
RESID_TENSORS = 8  # residual, normed input, q, k, v, z, attention out, residual mid
MLP_TENSORS = 3  # gate, up, activation (a plain MLP's two count as three: conservative)
GIB = 2 ** 30


@dataclass(frozen=True)
class ModelShape:
    """The model facts the estimate uses; ``act_bytes`` is the size of one activation value."""

    n_heads: int
    d_model: int
    d_mlp: int
    vocab_size: int
    act_bytes: int


@dataclass(frozen=True)
class BatchPlan:
    """A batch size and how it was chosen (recorded in the run manifest).

    ``source``: ``"given"`` (``--batch-size``), ``"auto"`` (this module's estimate) or
    ``"resumed"`` (the stored batch size of the run being resumed). Sizes in bytes.
    """

    batch_size: int
    source: str
    device_type: str
    seq_len: int | None = None  # the longest prompt, in tokens
    bytes_per_prompt: int | None = None
    free_bytes: int | None = None
    budget_bytes: int | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def model_shape(model) -> ModelShape:
    """The :class:`ModelShape` of a loaded model (``d_mlp`` from the bridge's config, else
    ``4 d_model``)."""
    import torch

    info = model.info
    d_mlp = getattr(model.bridge.cfg, "d_mlp", None) or 4 * info.d_model
    act_bytes = torch.finfo(getattr(torch, info.dtype)).bits // 8
    return ModelShape(info.n_heads, info.d_model, int(d_mlp), info.vocab_size, act_bytes)


def bytes_per_prompt(shape: ModelShape, seq_len: int, *, eager: bool, needs_logits: bool) -> int:
    """Estimated peak activation bytes one prompt of ``seq_len`` tokens adds to a forward
    (see the module docstring for the terms)."""
    a = shape.act_bytes
    total = seq_len * (RESID_TENSORS * shape.d_model + MLP_TENSORS * shape.d_mlp) * a
    if eager:
        total += shape.n_heads * seq_len * seq_len * (3 * a + 4)
    if needs_logits:
        total += seq_len * shape.vocab_size * (a + 4)
    return int(total)


def fit_batch_size(per_prompt: int, free_bytes: int, device_type: str) -> tuple[int, str | None]:
    """The batch size for ``free_bytes`` of free memory (module docstring), and a note when even
    one prompt is estimated not to fit."""
    budget = int(free_bytes * SAFETY)
    fit = budget // max(per_prompt, 1)
    cap = CPU_DEFAULT_BATCH if device_type == "cpu" else MAX_AUTO_BATCH
    if fit < 1:
        return 1, (f"one prompt needs an estimated {per_prompt / GIB:.2f} GiB, more than the "
                   f"budget of {budget / GIB:.2f} GiB ({SAFETY:.0%} of the free memory); it may "
                   "run out of memory (probes that need no attention pattern run with sdpa)")
    if fit >= cap:
        return cap, None
    return 1 << (int(fit).bit_length() - 1), None  # the largest power of two <= fit


def free_memory(device) -> int | None:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` from
    ``/proc/meminfo`` on the CPU (``None`` when unknown)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_batch(model, seq_len: int, *, eager: bool, needs_logits: bool,
               free_bytes: int | None = None) -> BatchPlan:
    """The automatic :class:`BatchPlan` for prompts of at most ``seq_len`` tokens on ``model``.

    ``free_bytes`` defaults to :func:`free_memory` of the model's device; when that is unknown
    the CPU default (8) is used.
    """
    device_type = model.device.type
    if free_bytes is None:
        free_bytes = free_memory(model.device)
    per_prompt = bytes_per_prompt(model_shape(model), seq_len, eager=eager,
                                  needs_logits=needs_logits)
    if free_bytes is None:
        return BatchPlan(CPU_DEFAULT_BATCH, "auto", device_type, seq_len, per_prompt,
                         note="free memory unknown: the default batch size")
    size, note = fit_batch_size(per_prompt, free_bytes, device_type)
    return BatchPlan(size, "auto", device_type, seq_len, per_prompt, free_bytes,
                     int(free_bytes * SAFETY), note)
