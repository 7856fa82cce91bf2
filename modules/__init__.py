"""An AUTOMATIC1111-compatible Stable Diffusion 1.5 web UI on diffusers."""

__version__ = "0.1.0"

#: The ``Version:`` value written into infotexts. It deliberately does not parse as an A1111 version
#: number, so A1111 does not apply its back-compatibility rules for old versions when it reads our images.
INFOTEXT_VERSION = f"sd-webui-diffusers {__version__}"
