"""Built-in LoRA / LyCORIS extension: ``<lora:name:multipliers>`` and its ``<lyco:...>`` alias.

Importing the package does nothing; ``extension.register(state)`` wires it into an ``AppState``.
"""
