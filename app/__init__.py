"""The Streamlit app that browses run directories. Imports the store and figure functions only."""
