"""Companion course modules: the text side of generative AI, with real offline models.

Each module is importable without its optional dependencies; functions that need them raise
`CourseDependencyError` naming the install extra (`pip install -e ".[course]"`).
"""
