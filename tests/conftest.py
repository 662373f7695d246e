"""Shared fixtures. The toy models are built once per test session (about a minute on 2 CPU cores) in
$BS_UNLEARN_CACHE when set, else in a temporary directory, exactly as a first-time user builds them."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOFU_DIR = os.environ.get("TOFU_DIR", os.path.join(ROOT, "..", "shared", "data", "tofu"))


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """(cache_dir, full_model_path, retain_model_path) of the embedded example, forget10."""
    import toy_world
    cache = os.environ.get("BS_UNLEARN_CACHE") or str(tmp_path_factory.mktemp("toy_cache"))
    full, retain = toy_world.ensure_toy_models(cache, "forget10", seed=0)
    return cache, full, retain


@pytest.fixture(scope="session")
def tofu_dir():
    """The real TOFU files (../shared/data/tofu); tests that need them skip in a user's clone."""
    if not os.path.isfile(os.path.join(TOFU_DIR, "forget10.json")):
        pytest.skip("TOFU files not found (../shared/data/tofu); set TOFU_DIR to run these tests")
    return TOFU_DIR


def one_line_error(call, *words):
    """call() must stop with one line starting with 'error:' that contains every word; returns the line."""
    with pytest.raises(SystemExit) as e:
        call()
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error:") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture(scope="session")
def smol_session(tmp_path_factory):
    """(model, tok, folder): SmolLM2-135M-Instruct's GGUF file loaded as `--model x.gguf` loads it (fp32,
    the TOFU system prompt), and saved once as a HF folder; shared by the real-model test files, since the
    dequantization takes ~20 s. Tests must not change the model in place (they copy it, or load the folder)."""
    import torch
    import bs_unlearn as bs
    from test_real_model import SYSTEM, smollm_gguf
    model, tok = bs.load_model(smollm_gguf(), torch.device("cpu"), "float32", system_prompt=SYSTEM)
    folder = str(tmp_path_factory.mktemp("smollm2") / "model")
    bs.save_model(model, tok, folder)
    return model.eval(), tok, folder
