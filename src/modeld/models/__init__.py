"""Models on disk: name and path resolution under the model roots, the facts read from GGUF
headers and IR directories, and the capacity arithmetic Describe reports."""
