"""A1111 hypernetworks: the ``.pt`` file format, the K/V context modules, their attention processors, the
``<hypernet:name:multiplier>`` extra network and the library of files under ``--hypernetwork-dir``."""
