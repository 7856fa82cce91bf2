"""Tests for modules/infotext.py: A1111 1.10 infotext strings, round trips, and metadata in image files.

Expected values are read off the infotext strings by eye or taken from A1111's documented behaviour (reference §10),
never produced by running the code under test.
"""

from __future__ import annotations

import io
import re
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules import infotext

SECTION10_EXAMPLE = (
    "a photo of a cat <lora:catlora:0.8>, (sharp:1.2)\n"
    "Negative prompt: blurry, easynegative\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123456789, Size: 512x512, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "catlora: 0123456789ab", '
    'TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)

# (id, infotext, expected subset of parse(), keys that must be absent)
REAL_INFOTEXTS = [
    ("section10-example", SECTION10_EXAMPLE, {
        "Prompt": "a photo of a cat <lora:catlora:0.8>, (sharp:1.2)",
        "Negative prompt": "blurry, easynegative",
        "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "123456789",
        "Size-1": "512", "Size-2": "512", "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Lora hashes": "catlora: 0123456789ab", "TI hashes": "easynegative: c74b4e810b03", "Version": "v1.10.1",
        "Clip skip": "1", "RNG": "GPU", "Emphasis": "Original", "Hires resize-1": 0, "Hires resize-2": 0,
        "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
        "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
        "Masked area padding": 32, "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
        "VAE Encoder": "Full", "VAE Decoder": "Full", "FP8 weight": "Disable",
        "Refiner switch by sampling steps": False,
    }, ["Size", "Downcast alphas_cumprod", "Cache FP16 weight for LoRA", "Old prompt editing timelines"]),
    ("multi-line-prompt-and-negative",
     "masterpiece, best quality\n1girl, solo\nsitting on a bench\n"
     "Negative prompt: lowres, bad anatomy\nbad hands\n"
     "Steps: 28, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 512x768, Model hash: abcdef1234, "
     "Clip skip: 2, ENSD: 31337, Version: v1.6.0", {
         "Prompt": "masterpiece, best quality\n1girl, solo\nsitting on a bench",
         "Negative prompt": "lowres, bad anatomy\nbad hands",
         "Size-1": "512", "Size-2": "768", "Clip skip": "2", "ENSD": "31337", "CFG scale": "6.5",
         "Schedule type": "Automatic", "Downcast alphas_cumprod": True,
     }, ["Emphasis", "Old prompt editing timelines", "Pad conds v0"]),
    ("no-negative",
     "a red fox in the snow, golden hour\n"
     "Steps: 20, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 640x448, Version: v1.9.4", {
         "Prompt": "a red fox in the snow, golden hour", "Negative prompt": "", "CFG scale": "7.0",
         "Size-1": "640", "Size-2": "448", "Version": "v1.9.4",
     }, ["Emphasis", "Downcast alphas_cumprod"]),
    ("last-line-has-two-pairs-so-it-is-prompt",
     "a cat on a mat\nstyle: watercolor, mood: calm", {
         "Prompt": "a cat on a mat\nstyle: watercolor, mood: calm", "Negative prompt": "", "Clip skip": "1",
     }, ["style", "mood"]),
    ("quoted-comma-and-escaped-quote",
     "castle\nSteps: 30, Sampler: DPM++ SDE, CFG scale: 5, Seed: 7, Size: 768x512, Denoising strength: 0.45, "
     'Hires prompt: "a \\"quoted\\" word, and more", Hires upscale: 2, Hires upscaler: Latent', {
         "Prompt": "castle", "Hires prompt": 'a "quoted" word, and more', "Hires upscale": "2",
         "Hires upscaler": "Latent", "Denoising strength": "0.45",
     }, []),
    ("hypernet-with-strength",
     "a castle on a hill\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, "
     "Hypernet: foo, Hypernet strength: 0.5", {
         "Prompt": "a castle on a hill<hypernet:foo:0.5>", "Hypernet": "foo", "Hypernet strength": "0.5",
     }, []),
    ("hypernet-without-strength",
     "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Hypernet: anime_3", {
         "Prompt": "a castle<hypernet:anime_3:1.0>",
     }, []),
    ("non-ascii",
     "桜の木の下の猫, café au lait, (żółw:1.1)\nNegative prompt: 低品質, ぼやけた\n"
     'Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 99, Size: 512x512, '
     'TI hashes: "ネガ: c74b4e810b03", Version: v1.10.1', {
         "Prompt": "桜の木の下の猫, café au lait, (żółw:1.1)", "Negative prompt": "低品質, ぼやけた",
         "TI hashes": "ネガ: c74b4e810b03", "Emphasis": "Original",
     }, []),
    ("old-version-backcompat",
     "a [dog:cat:10] in a field\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 3, Size: 512x512, "
     "Version: v1.5.1", {
         "Old prompt editing timelines": True, "Pad conds v0": True, "Downcast alphas_cumprod": True,
         "Emphasis": "Original",  # A1111's attention parser reads [dog:cat:10] as a [de-emphasis]
     }, []),
    ("refiner-before-1.8",
     "a city\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Refiner: sd_xl_refiner_1.0, "
     "Refiner switch at: 0.8, Version: v1.7.0", {
         "Refiner": "sd_xl_refiner_1.0", "Refiner switch at": "0.8", "Refiner switch by sampling steps": True,
         "Downcast alphas_cumprod": True,
     }, []),
    ("git-describe-version-after-1.7.0-225",
     "a city\nSteps: 20, Sampler: Euler, CFG scale: 7, Version: v1.7.0-375-gf92d6149", {
         "Version": "v1.7.0-375-gf92d6149",
     }, ["Downcast alphas_cumprod"]),
    ("forge-version-is-not-parsed",
     "a city\nSteps: 20, Sampler: Euler, CFG scale: 7, Version: f2.0.1v1.10.1-previous-313-g1de7e5b9", {
         "Version": "f2.0.1v1.10.1-previous-313-g1de7e5b9",
     }, ["Downcast alphas_cumprod"]),
    ("old-first-pass-size-zero",
     "a house\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x1024, First pass size: 0x0", {
         "Size-1": 512, "Size-2": 512, "Hires resize-1": 1024, "Hires resize-2": 1024,
     }, []),
    ("old-first-pass-size-given",
     "a house\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x768, First pass size: 384x256", {
         "Size-1": 384, "Size-2": 256, "Hires resize-1": 1024, "Hires resize-2": 768,
     }, []),
    ("params-only", "Steps: 20, Sampler: Euler a, CFG scale: 7", {
        "Prompt": "", "Negative prompt": "", "Steps": "20",
    }, []),
    ("empty-value-is-dropped", "x\nSteps: 20, Sampler: , CFG scale: 7, Seed: 3", {
        "Steps": "20", "CFG scale": "7", "Seed": "3",
    }, ["Sampler"]),
    ("fp8-implies-cache-default", "x\nSteps: 20, Sampler: Euler, CFG scale: 7, FP8 weight: Enable", {
        "FP8 weight": "Enable", "Cache FP16 weight for LoRA": False,
    }, []),
    ("explicit-emphasis-kept", "(x:1.3)\nSteps: 20, Sampler: Euler, CFG scale: 7, Emphasis: No norm", {
        "Emphasis": "No norm",
    }, []),
    ("emphasis-from-negative-only", "plain\nNegative prompt: [blurry]\nSteps: 20, Sampler: Euler, CFG scale: 7", {
        "Emphasis": "Original",
    }, []),
    ("leading-blank-line-of-negative-dropped",
     "a\n\nb\nNegative prompt:\nugly\nSteps: 20, Sampler: Euler, CFG scale: 7", {
         "Prompt": "a\n\nb", "Negative prompt": "ugly",
     }, []),
    ("crlf-line-endings", "a dog\r\nNegative prompt: cat\r\nSteps: 20, Sampler: Euler, CFG scale: 7\r\n", {
        "Prompt": "a dog", "Negative prompt": "cat", "CFG scale": "7",
    }, []),
]


@pytest.mark.parametrize(("text", "expected", "absent"), [r[1:] for r in REAL_INFOTEXTS],
                         ids=[r[0] for r in REAL_INFOTEXTS])
def test_parse_real_infotexts(text: str, expected: dict, absent: list) -> None:
    res = infotext.parse(text)
    for key, value in expected.items():
        assert key in res, key
        assert res[key] == value and type(res[key]) is type(value), (key, res[key])
    for key in absent:
        assert key not in res, key


def test_parse_options_backcompat_off_and_skip_fields() -> None:
    text = "a [b:c:5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 8, Version: v1.2.0"
    res = infotext.parse(text, backcompat=False, skip_fields=["Seed", "Clip skip"])
    assert "Downcast alphas_cumprod" not in res and "Pad conds v0" not in res
    assert "Seed" not in res and "Clip skip" not in res and res["Steps"] == "20"


def test_raw_value_wrapped_in_quotes_is_decoded_like_a1111() -> None:
    # A quote()-less value that happens to start and end with '"' is JSON-decoded on the way back (A1111 quirk).
    text = infotext.build("p", "", {"Steps": 20, "Sampler": "Euler", "Model": '"mine"'})
    assert text == 'p\nSteps: 20, Sampler: Euler, Model: "mine"'
    assert infotext.parse(text)["Model"] == "mine"


# ---------------------------------------------------------------------------------------------------------- build
@pytest.mark.parametrize(("value", "expected"), [
    (7.0, "7.0"), (7, "7"), (0.75, "0.75"), (True, "True"), ("Euler a", "Euler a"), ("DPM++ 2M", "DPM++ 2M"),
    ("a:b", '"a:b"'), ("a,b", '"a,b"'), ("a\nb", '"a\\nb"'), ('say "hi"', 'say "hi"'),
    ('x, "y"', '"x, \\"y\\""'), ("猫, 犬", '"猫, 犬"'), ("back\\slash: 1", '"back\\\\slash: 1"'),
    ("512x512", "512x512"), (["a", "b"], '["a", "b"]'),
])
def test_quote(value: object, expected: str) -> None:
    assert infotext.quote(value) == expected


def test_build_section10_example_from_ordered_params() -> None:
    fixed = {  # given out of order on purpose: ordered_params must restore A1111's order
        "Model": "v1-5-pruned-emaonly", "Seed": 123456789, "Steps": 20, "Size": "512x512", "CFG scale": 7,
        "Schedule type": "Karras", "Sampler": "DPM++ 2M", "Model hash": "6ce0161689", "Clip skip": None,
        "RNG": None,
    }
    extra = {"Lora hashes": "catlora: 0123456789ab", "TI hashes": "easynegative: c74b4e810b03"}
    params = infotext.ordered_params(fixed, extra, "v1.10.1")
    prompt = "a photo of a cat <lora:catlora:0.8>, (sharp:1.2)"
    assert infotext.build(prompt, "blurry, easynegative", params) == SECTION10_EXAMPLE


@pytest.mark.parametrize(("prompt", "negative", "params", "expected"), [
    ("cat", "", {"Steps": 20, "Sampler": "Euler a", "Seed": 1}, "cat\nSteps: 20, Sampler: Euler a, Seed: 1"),
    ("", "", {"Steps": 20}, "Steps: 20"),
    ("", "bad", {"Steps": 20}, "Negative prompt: bad\nSteps: 20"),
    ("cat ", "", {"Steps": 5, "Tiling": None}, "cat \nSteps: 5"),
    ("x", "y", {"Steps": 5, "Flag": "Flag", "CFG scale": 7.0}, "x\nNegative prompt: y\nSteps: 5, Flag, CFG scale: 7.0"),
    ("  x", "", {}, "x"),
])
def test_build(prompt: str, negative: str, params: dict, expected: str) -> None:
    assert infotext.build(prompt, negative, params) == expected


def test_ordered_params_order_and_overrides() -> None:
    params = infotext.ordered_params({"Tiling": "True", "Steps": 4}, {"Eta": 0.5, "Steps": 9}, None, "bob")
    assert list(params) == ["Steps", "Tiling", "Eta", "Version", "User"]
    assert params["Steps"] == 9 and params["Version"] is None and params["User"] == "bob"
    assert list(infotext.PARAMS_ORDER[:4]) == ["Steps", "Sampler", "Schedule type", "CFG scale"]
    assert infotext.PARAMS_ORDER[-1] == "Tiling" and len(infotext.PARAMS_ORDER) == 26


def test_ordered_params_rejects_unknown_fixed_key() -> None:
    with pytest.raises(ValueError, match="Lora hashes"):
        infotext.ordered_params({"Steps": 1, "Lora hashes": "x: 1"}, {}, None)


def test_infotext_to_option_known_mappings() -> None:
    m = infotext.INFOTEXT_TO_OPTION
    assert m["Clip skip"] == "CLIP_stop_at_last_layers" and m["Model hash"] == "sd_model_checkpoint"
    assert m["RNG"] == "randn_source" and m["ENSD"] == "eta_noise_seed_delta" and m["Emphasis"] == "emphasis"
    assert m["Schedule max sigma"] == "sigma_max"


# ---------------------------------------------------------------------------------------------------- round trip
_RESERVED = {"Prompt", "Negative prompt", "Hypernet", "Hypernet strength", "Version", "Old prompt editing timelines",
             "Pad conds v0", "Downcast alphas_cumprod", "Refiner switch by sampling steps"}
_SPECIAL_TEXT = ["a, b", "x: y", "line1\nline2", 'say "hi", ok', "back\\slash, x", "猫: ねこ", "DPM++ 2M",
                 "512x768", 'a"b', "\\", "tab\there", "1e-05", "(a:1.2), [b]", "<lora:x:0.8>", "ü, ß: €"]

keys = st.from_regex(r"\w[\w \-/]{0,15}\w", fullmatch=True).filter(
    lambda k: k not in _RESERVED and not k.startswith("First pass size") and not re.search(r"-[12]$", k))
values = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.sampled_from(_SPECIAL_TEXT),
                   st.text(min_size=1, max_size=20))
prompt_lines = st.one_of(st.sampled_from(_SPECIAL_TEXT), st.text(
    st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1, max_size=30))


def _prompt(lines: list[str]) -> str:
    """Join lines; A1111 strips each line and drops leading blank ones, so generate only lines that survive."""
    lines = [line.strip() for line in lines]
    return "\n".join(line for line in lines if line and not line.startswith("Negative prompt:"))


def _expected_entries(params: dict) -> dict[str, str]:
    """What parse() must give back for each param: its str, or Key-1/Key-2 for a WxH value (reference §10)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        size = re.match(r"^(\d+)x(\d+)$", str(value))
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.group(1), size.group(2)
        else:
            out[key] = str(value)
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(prompt_lines, max_size=4), st.lists(prompt_lines, max_size=3),
       st.dictionaries(keys, values, min_size=3, max_size=8))
def test_round_trip(prompt_parts: list[str], negative_parts: list[str], params: dict) -> None:
    prompt, negative = _prompt(prompt_parts), _prompt(negative_parts)
    for key, value in params.items():
        text = str(value)
        assume(text and text == text.strip() and text != key)
        # A raw (unquoted) value starting with '"' can swallow the next pair, as in A1111; quote() avoids that.
        assume(not text.startswith('"') or infotext.quote(value) != text)
    res = infotext.parse(infotext.build(prompt, negative, params))
    assert res["Prompt"] == prompt
    assert res["Negative prompt"] == negative
    for key, value in _expected_entries(params).items():
        assert res.get(key) == value, key


# ------------------------------------------------------------------------------------------------------ emphasis
@pytest.mark.parametrize(("text", "expected"), [
    # examples from A1111's parse_prompt_attention documentation
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
])
def test_attention_segments(text: str, expected: list) -> None:
    got = infotext.attention_segments(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize(("text", "expected"), [
    ("plain words, no weights", False), ("(x)", True), ("[x]", True), ("(x:1.0)", False), ("(x:0.9)", True),
    ("\\(not emphasis\\)", False), ("[(x)]", False), ("a BREAK b", False), ("(unclosed", True),
    ("stray:1.2) paren", False), ("<lora:catlora:0.8>", False), ("", False),
])
def test_uses_emphasis(text: str, expected: bool) -> None:
    assert infotext.uses_emphasis(text) is expected


# ------------------------------------------------------------------------------------------------------ versions
VERSIONS = ["1.0.dev1", "1.0a1", "1.0b2", "1.0rc1", "1.0", "1.0.post1", "1.5.1", "v1.6.0-RC", "1.6.0",
            "v1.6.0-2", "1.7.0", "v1.7.0-225", "v1.7.0-226", "1.8.0", "1.8.0-139", "v1.9.4", "v1.10.0", "v1.10.1",
            "1!0.1"]


@pytest.mark.parametrize("a", VERSIONS)
@pytest.mark.parametrize("b", VERSIONS)
def test_version_key_orders_like_packaging(a: str, b: str) -> None:
    version = pytest.importorskip("packaging.version")
    ka, kb = infotext.version_key(a), infotext.version_key(b)
    va, vb = version.Version(a), version.Version(b)
    assert (ka < kb) == (va < vb) and (ka == kb) == (va == vb)


@pytest.mark.parametrize("text", [None, "", "not a version", "f2.0.1v1.10.1-previous-313-g1de7e5b9"])
def test_version_key_invalid(text: str | None) -> None:
    assert infotext.version_key(text) is None


# -------------------------------------------------------------------------------------------------------- images
def _exif_with_user_comment(comment: bytes, big_endian: bool = True) -> bytes:
    """A minimal EXIF block, built by hand: IFD0 -> Exif IFD -> UserComment (UNDEFINED), as piexif lays it out."""
    e = ">" if big_endian else "<"
    header = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    exif_ifd_at = 8 + 2 + 12 + 4
    data_at = exif_ifd_at + 2 + 12 + 4
    ifd0 = struct.pack(e + "H", 1) + struct.pack(e + "HHII", 0x8769, 4, 1, exif_ifd_at) + struct.pack(e + "I", 0)
    exif_ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHII", 0x9286, 7, len(comment), data_at)
    return b"Exif\0\0" + header + ifd0 + exif_ifd + struct.pack(e + "I", 0) + comment


def _save(fmt: str, **kwargs: object) -> tuple[bytes, Image.Image]:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, fmt, **kwargs)
    return buf.getvalue(), Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(("text", "chunk"), [
    (SECTION10_EXAMPLE, b"tEXtparameters"),
    ("café crème\nSteps: 20, Sampler: Euler, CFG scale: 7", b"tEXtparameters"),  # Latin-1 still fits tEXt
    ("桜の猫\nNegative prompt: 低品質\nSteps: 20, Sampler: Euler, CFG scale: 7", b"iTXtparameters"),
])
def test_png_round_trip(text: str, chunk: bytes) -> None:
    data, image = _save("PNG", pnginfo=infotext.add_to_png(text))
    assert chunk in data
    assert infotext.read_from_image(image) == text


UNICODE_TEXT = "猫 café, (sharp:1.2)\nNegative prompt: 低品質\nSteps: 20, Sampler: DPM++ 2M, Seed: 1"


@pytest.mark.parametrize(("fmt", "comment", "big_endian"), [
    ("JPEG", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be"), True),  # what A1111 (piexif) writes
    ("WEBP", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be"), True),
    ("JPEG", b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-le"), False),  # little-endian writers
    ("JPEG", b"UNICODE\0" + "\ufeff".encode("utf-16-le") + UNICODE_TEXT.encode("utf-16-le"), True),  # BOM
    ("WEBP", b"UNICODE\0" + "\ufeff".encode("utf-16-be") + UNICODE_TEXT.encode("utf-16-be"), False),
])
def test_exif_user_comment_unicode(fmt: str, comment: bytes, big_endian: bool) -> None:
    _, image = _save(fmt, exif=_exif_with_user_comment(comment, big_endian))
    assert infotext.read_from_image(image) == UNICODE_TEXT


@pytest.mark.parametrize(("comment", "expected"), [
    (b"ASCII\0\0\0Steps: 20, Seed: 1", "Steps: 20, Seed: 1"),
    (b"JIS\0\0\0\0\0" + "猫".encode("shift_jis"), "猫"),
    (b"\0" * 8 + b"plain", "plain"),
    (b"no header, utf-8 \xc3\xa9", "no header, utf-8 é"),
    (b"", ""),
])
def test_decode_user_comment(comment: bytes, expected: str) -> None:
    assert infotext.decode_user_comment(comment) == expected


def test_add_to_exif_round_trip_and_layout() -> None:
    _, image = _save("JPEG", exif=infotext.add_to_exif(UNICODE_TEXT))
    assert infotext.read_from_image(image) == UNICODE_TEXT
    raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw == b"UNICODE\0" + UNICODE_TEXT.encode("utf-16-be")


def test_exif_comment_wins_over_png_parameters() -> None:
    _, image = _save("PNG", pnginfo=infotext.add_to_png("from png"),
                     exif=_exif_with_user_comment(b"UNICODE\0" + "from exif".encode("utf-16-be")))
    assert infotext.read_from_image(image) == "from exif"


def test_empty_exif_comment_keeps_png_parameters() -> None:
    _, image = _save("PNG", pnginfo=infotext.add_to_png("from png"), exif=_exif_with_user_comment(b"UNICODE\0"))
    assert infotext.read_from_image(image) == "from png"


def test_gif_comment() -> None:
    _, image = _save("GIF", comment="a gif\nSteps: 20, Sampler: Euler, CFG scale: 7".encode())
    assert infotext.read_from_image(image) == "a gif\nSteps: 20, Sampler: Euler, CFG scale: 7"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_no_metadata(fmt: str) -> None:
    _, image = _save(fmt)
    assert infotext.read_from_image(image) is None
