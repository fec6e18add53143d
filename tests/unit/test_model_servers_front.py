"""What the model_servers role needs from its TEI-compatible front beyond TEI's API
(roles/model_servers/files/tei_front.py; the API itself: tests/unit/test_tei_front.py):

- default_prompt (TEI's --default-prompt): ruri's document prefix before every embedding input, inside the
  length limit -- huggingface_tei does not pass Dify's input type, so the front adds it;
- info_max_input_length: what /info reports as max_input_length, so that huggingface_tei (which cuts every
  text whose GPT-2 token count reaches it) never cuts a chunk the model could take whole;
- `tei_front.py --check CONFIG`: the role's `validate:` of every front configuration before it is written.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRONT_PY = ROOT / "roles" / "model_servers" / "files" / "tei_front.py"
spec = importlib.util.spec_from_file_location("tei_front_for_role", FRONT_PY)
tf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf)

BASE = {"port": 17690, "backend": "llamacpp", "backend_url": "http://127.0.0.1:17691", "kind": "embedding",
        "model_id": "m", "max_input_length": 8, "max_client_batch_size": 4}


class Backend:
    """Characters are tokens; [CLS] [SEP] around a text."""

    name = "llamacpp"
    has_tokenizer = True

    class http:  # noqa: N801 - the attribute the front closes
        @staticmethod
        def close():
            pass

    def __init__(self):
        self.calls = []

    def specials(self):
        return [1, 2]

    def count(self, text):
        return [ord(c) for c in text]

    def detokenize(self, ids):
        return "".join(chr(i) for i in ids)

    def embed(self, inputs, normalize=True):
        self.calls.append(list(inputs))
        return [[1.0] for _ in inputs], None


def front(**over):
    backend = Backend()
    return tf.Front(tf.load_config(dict(BASE, **over)), backend), backend


@pytest.mark.parametrize("prompt, texts, sent", [
    ("", ["ab"], ["ab"]),
    ("P: ", ["ab", "c"], ["P: ab", "P: c"]),
    ("文章: ", ["瑠璃"], ["文章: 瑠璃"]),
    ("文章: ", ["瑠璃色"], ["文章: 瑠璃"]),   # 7 characters + [CLS] [SEP] > 8: cut
    ("P: ", ["abcdefgh"], ["P: abc"]),      # the prompt counts: 8 tokens - [CLS] [SEP] = 6 characters
])
def test_default_prompt_is_put_before_every_input_inside_the_limit(prompt, texts, sent):
    f, b = front(default_prompt=prompt)
    f.embed({"input": texts}, openai=True)
    f.embed({"inputs": texts})
    assert b.calls == [sent, sent]


def test_token_id_inputs_get_no_prompt():
    f, b = front(default_prompt="P: ")
    f.embed({"inputs": [[5, 6]]})
    assert b.calls == [[[5, 6]]]


@pytest.mark.parametrize("over, reported", [({}, 8), ({"info_max_input_length": 2000}, 2000)])
def test_info_reports_info_max_input_length(over, reported):
    f, _ = front(**over)
    info = f.info()
    assert info["max_input_length"] == reported
    assert f.limit == 8   # truncation keeps the backend's own limit


@pytest.mark.parametrize("over, message", [
    ({"info_max_input_length": 4}, "info_max_input_length must be an integer of at least max_input_length (8)"),
    ({"info_max_input_length": "2000"}, "info_max_input_length must be an integer"),
    ({"info_max_input_length": 2000, "auto_truncate": False}, "info_max_input_length above max_input_length needs"),
    ({"default_prompt": 3}, "default_prompt must be a string"),
])
def test_bad_values_are_refused(over, message):
    with pytest.raises(tf.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tf.load_config(dict(BASE, **over))


@pytest.mark.parametrize("cfg, rc", [(BASE, 0), (dict(BASE, default_prompt="文章: ", info_max_input_length=64), 0),
                                     (dict(BASE, max_batch=4), 1), (dict(BASE, port="x"), 1)])
def test_check_validates_a_configuration_file(tmp_path, cfg, rc):
    path = tmp_path / "front.json"
    path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    run = subprocess.run([sys.executable, str(FRONT_PY), "--check", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == rc, run.stderr
    assert (run.stderr == "") is (rc == 0)
