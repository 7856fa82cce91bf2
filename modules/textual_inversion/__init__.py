"""Textual-inversion embeddings: A1111's file formats (``formats``), its image-embedded data (``image_embedding``)
and the library of embeddings found under ``--embeddings-dir`` (``database``).

Matching embedding names in prompts and putting their vectors into the text encoder's input lives in
``modules.conditioning``; this package only finds, reads and indexes the files. Importing it does nothing.
"""
