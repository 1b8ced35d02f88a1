"""infernet-ml's workflows run end to end against the server, as an Infernet node runs them:

* TGIClientInferenceWorkflow(server_url, timeout, headers, retry_params=..., **params):
  setup() (a warm-up `generate("hello")`), inference() and stream(); it uses
  text_generation.Client, so it posts to `/`.
* HFInferenceClientWorkflow(token): setup() then inference() of the text generation task
  (task_id 1) with `model` set to the server's URL; it uses huggingface_hub's
  InferenceClient (0.25.1, the version infernet-ml pins).
"""

import pytest
from infernet_ml.utils.hf_types import HFTaskId, HFTextGenerationInferenceInput, parse_hf_inference_input_from_dict
from infernet_ml.utils.retry import RetryParams
from infernet_ml.workflows.inference.hf_inference_client_workflow import HFInferenceClientWorkflow
from infernet_ml.workflows.inference.tgi_client_inference_workflow import (
    TGIClientInferenceWorkflow,
    TgiInferenceRequest,
)

from conftest import MAX_NEW_TOKENS, PROMPT

# The retry parameters infernet-ml documents (infernet_ml.utils.retry defaults:
# tries=3, delay=3, max_delay=None, backoff=2, jitter=(0.5, 1.5)), passed explicitly.
RETRY = RetryParams(tries=3, delay=3, max_delay=None, backoff=2, jitter=(0.5, 1.5))


@pytest.fixture(scope="module")
def tgi_workflow(url, api_key):
    wf = TGIClientInferenceWorkflow(
        url,
        timeout=120,
        headers={"Authorization": f"Bearer {api_key}"},
        retry_params=RETRY,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    assert wf.setup() is True
    return wf


def test_tgi_workflow_inference(tgi_workflow, greedy):
    out = tgi_workflow.inference(TgiInferenceRequest(text=PROMPT))
    assert isinstance(out, str)
    assert out == greedy["generated_text"]


def test_tgi_workflow_stream(tgi_workflow, greedy):
    responses = list(tgi_workflow.stream(TgiInferenceRequest(text=PROMPT)))
    assert len(responses) == greedy["details"]["generated_tokens"]
    text = "".join(r.token.text for r in responses if not r.token.special)
    assert text == greedy["generated_text"]
    last = responses[-1]
    assert last.generated_text == text
    assert last.details.finish_reason.value == greedy["details"]["finish_reason"]


def test_tgi_workflow_sampling_params(url, api_key):
    # Generation parameters given to the workflow go to every request.
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    outs = []
    for _ in range(2):
        wf = TGIClientInferenceWorkflow(
            url, timeout=120, headers={"Authorization": f"Bearer {api_key}"}, retry_params=RETRY, **kw
        )
        wf.setup()
        outs.append(wf.inference(TgiInferenceRequest(text=PROMPT)))
    assert outs[0] and outs[0] == outs[1]


def test_tgi_workflow_setup_fails_fast_without_the_token(url):
    from text_generation.errors import UnknownError

    wf = TGIClientInferenceWorkflow(url, timeout=60, retry_params=RETRY, max_new_tokens=2)
    with pytest.raises(UnknownError):
        wf.setup()


def test_tgi_workflow_validation_error_is_not_retried(url, api_key):
    from infernet_ml.workflows.exceptions import InfernetMLException
    from text_generation.errors import ValidationError

    wf = TGIClientInferenceWorkflow(
        url,
        timeout=60,
        headers={"Authorization": f"Bearer {api_key}"},
        retry_params=RETRY,
        max_new_tokens=10_000_000,
    )
    wf.is_setup = True  # setup() would fail the same way; this exercises inference()
    with pytest.raises(InfernetMLException) as e:
        wf.inference(TgiInferenceRequest(text=PROMPT))
    assert isinstance(e.value.__cause__, ValidationError)


@pytest.fixture(scope="module")
def hf_workflow(api_key):
    return HFInferenceClientWorkflow(token=api_key).setup()


def test_hf_workflow_text_generation(hf_workflow, url, greedy):
    out = hf_workflow.inference(
        HFTextGenerationInferenceInput(prompt=PROMPT, model=url, max_new_tokens=MAX_NEW_TOKENS)
    )
    assert out["output"] == greedy["generated_text"]


def test_hf_workflow_text_generation_from_a_node_request(hf_workflow, url, greedy):
    # The input an Infernet node hands the workflow: {task_id, prompt, model, ...}.
    request = parse_hf_inference_input_from_dict(
        {"task_id": int(HFTaskId.TEXT_GENERATION), "prompt": PROMPT, "model": url, "max_new_tokens": MAX_NEW_TOKENS}
    )
    out = hf_workflow.inference(request)
    assert out["output"] == greedy["generated_text"]


def test_hf_workflow_text_generation_details(hf_workflow, url, greedy):
    out = hf_workflow.inference(
        HFTextGenerationInferenceInput(prompt=PROMPT, model=url, max_new_tokens=MAX_NEW_TOKENS, details=True)
    )["output"]
    assert out.generated_text == greedy["generated_text"]
    assert out.details.finish_reason == greedy["details"]["finish_reason"]
    assert out.details.generated_tokens == greedy["details"]["generated_tokens"]


def test_hf_workflow_text_generation_stream(hf_workflow, url, greedy):
    out = hf_workflow.inference(
        HFTextGenerationInferenceInput(prompt=PROMPT, model=url, max_new_tokens=MAX_NEW_TOKENS, stream=True)
    )["output"]
    assert "".join(out) == greedy["generated_text"]


def test_hf_workflow_wrong_token(url):
    from huggingface_hub.utils import HfHubHTTPError

    wf = HFInferenceClientWorkflow(token="not-the-key").setup()
    with pytest.raises(Exception) as e:
        wf.inference(HFTextGenerationInferenceInput(prompt=PROMPT, model=url, max_new_tokens=2))
    # huggingface_hub parses the TGI-style JSON error, raised from the HTTP error.
    http = [x for x in (e.value, e.value.__cause__) if isinstance(x, HfHubHTTPError)]
    assert http and http[0].response.status_code == 401, repr(e.value)
