"""Trainers that run on a CPU: the demo base model and the networks (embedding, hypernetwork, LoRA).

``shapes`` draws the synthetic scenes (a coloured shape on a coloured background) and their captions;
``base_model`` trains the tiny SD1.5-layout demo checkpoint on them. Importing the package does nothing.
"""
