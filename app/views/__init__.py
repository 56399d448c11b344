"""The app's pages; Streamlit runs each file as a script (``app/main.py`` lists them)."""
