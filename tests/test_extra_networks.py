"""``<type:args>`` tag extraction (A1111's rules and quirks) and the registry's activate/deactivate contract."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import extra_networks
from modules.extra_networks import ActivationContext, ExtraNetworkParams, ExtraNetworkRegistry
from modules.processing import process
from modules.processing_params import GenerationParams


@pytest.mark.parametrize(("prompt", "text", "tags"), [
    ("a <lora:foo:0.8> b", "a  b", {"lora": [("foo", "0.8")]}),  # nothing trimmed around the tag
    ("<lora:a:1><lora:b:0.5:0.2> x <hypernet:h:0.3>", " x ",
     {"lora": [("a", "1"), ("b", "0.5", "0.2")], "hypernet": [("h", "0.3")]}),
    ("<foo:bar> cat", " cat", {"foo": [("bar",)]}),  # unknown types are stripped too
    ("<lora:a:1 cat", "<lora:a:1 cat", {}),  # no closing >
    ("<lora-x:1> cat", "<lora-x:1> cat", {}),  # \w+ has no '-'
    ("<lora:x:unet=0.5:te=1:dyn=16>", "", {"lora": [("x", "unet=0.5", "te=1", "dyn=16")]}),
    ("<lora::>", "", {"lora": [("", "")]}),
])
def test_parse_prompt(prompt: str, text: str, tags: dict) -> None:
    stripped, found = extra_networks.parse_prompt(prompt)
    assert stripped == text
    assert {k: [p.items for p in v] for k, v in found.items()} == tags


def test_named_and_positional_arguments() -> None:
    params = ExtraNetworkParams(("x", "0.7", "te=0.2", "b=c=d", "unet=1"))
    assert params.positional == ("x", "0.7", "b=c=d")  # two '=': positional, as A1111's split('=', 2)
    assert params.named == {"te": "0.2", "unet": "1"}


def test_only_the_first_prompt_of_a_batch_activates() -> None:
    prompts, data = extra_networks.parse_prompts(["a <lora:one:1>", "b <lora:two:1>"])
    assert prompts == ["a ", "b "]
    assert [p.items for p in data["lora"]] == [("one", "1")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>:=ab_ 1.\\|()[]\n")) | st.characters(), max_size=200))
def test_any_text_parses_and_leaves_no_tag(text: str) -> None:
    stripped, found = extra_networks.parse_prompt(text)
    tags = re.findall(r"<(\w+):([^>]+)>", text)  # A1111's regex, one pass
    assert sum(len(v) for v in found.values()) == len(tags)
    assert len(stripped) == len(text) - sum(len(f"<{t}:{a}>") for t, a in tags)


class Recorder:
    """A fake network that records every call, and can be told to fail."""

    def __init__(self, name: str, log: list, fail_on_activate: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail_on_activate

    def activate(self, ctx: ActivationContext, params: list[ExtraNetworkParams]) -> None:
        self.log.append(("activate", self.name, [p.items for p in params]))
        if self.fail:
            raise RuntimeError(f"{self.name} failed")

    def deactivate(self, ctx: ActivationContext) -> None:
        self.log.append(("deactivate", self.name))


def test_registry_contract() -> None:
    log: list = []
    registry = ExtraNetworkRegistry()
    registry.register(Recorder("lora", log), "lyco")
    registry.register(Recorder("hypernet", log))
    ctx = ActivationContext(model=None, opts={})
    _, data = extra_networks.parse_prompt("<hypernet:h:1> <lyco:a:1> <lora:b:1> <nope:x>")
    with registry.activated(ctx, data):
        log.append("body")
    assert log == [("activate", "hypernet", [("h", "1")]), ("activate", "lora", [("a", "1"), ("b", "1")]),
                   "body", ("deactivate", "lora"), ("deactivate", "hypernet")]
    assert ctx.comments == ["Skipping unknown extra network: nope"]
    log.clear()
    with registry.activated(ActivationContext(model=None, opts={}), {}):
        pass
    assert log == [("activate", "lora", []), ("activate", "hypernet", []),  # [] switches last job's networks off
                   ("deactivate", "hypernet"), ("deactivate", "lora")]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Recorder("lyco", log))


def test_failures_still_deactivate_everything_entered() -> None:
    log: list = []
    registry = ExtraNetworkRegistry()
    registry.register(Recorder("first", log))
    registry.register(Recorder("second", log, fail_on_activate=True))
    registry.register(Recorder("third", log))
    with pytest.raises(RuntimeError, match="second failed"):
        with registry.activated(ActivationContext(model=None, opts={}), {}):
            pass
    assert log == [("activate", "first", []), ("activate", "second", []), ("deactivate", "second"),
                   ("deactivate", "first")]
    log.clear()
    registry2 = ExtraNetworkRegistry()
    registry2.register(Recorder("only", log))
    with pytest.raises(KeyError):
        with registry2.activated(ActivationContext(model=None, opts={}), {}):
            raise KeyError("job failed")
    assert log[-1] == ("deactivate", "only")


def test_tags_reach_networks_not_clip_and_stay_in_the_infotext(make_state) -> None:
    state = make_state()
    log: list = []
    state.networks.register(Recorder("fakenet", log))
    base = dict(steps=3, width=64, height=64, seed=5, save_images=False, batch_size=2)
    tagged = process(state, GenerationParams(prompt="a red <fakenet:shiny:0.6> cat <unknown:z>", **base))
    plain = process(state, GenerationParams(prompt="a red  cat ", **base))
    assert np.array_equal(np.asarray(tagged.images[1]), np.asarray(plain.images[1]))  # CLIP saw no tags
    assert ("activate", "fakenet", [("shiny", "0.6")]) in log and log[-1] == ("deactivate", "fakenet")
    assert tagged.infotexts[1].startswith("a red <fakenet:shiny:0.6> cat <unknown:z>\n")
    assert "Skipping unknown extra network: unknown" in tagged.comments
    assert re.search(r"<fakenet:", tagged.info()["all_prompts"][0])
