"""The keyword arguments our code and notebooks pass to transformers, peft, accelerate and papermill still exist.

Libraries rename keywords (`torch_dtype` became `dtype` in transformers 5); a renamed keyword that lands in a
`**kwargs` is often ignored silently. Every call to a library callable below, in the package, launch/ and the
notebooks' code cells, is found by parsing the source, and each keyword is checked against the installed
callable: in its signature, or, for callables that take `**kwargs`, read by name somewhere in its source.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import papermill
import peft
import pytest
import transformers
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from transformers import PreTrainedModel

ROOT = Path(__file__).resolve().parent.parent

CALLABLES = {  # the name a call is written with -> the installed callable it reaches
    "LoraConfig": peft.LoraConfig,
    "get_peft_model": peft.get_peft_model,
    "PeftModel.from_pretrained": peft.PeftModel.from_pretrained,
    "set_peft_model_state_dict": peft.set_peft_model_state_dict,
    "Accelerator": Accelerator,
    "InitProcessGroupKwargs": InitProcessGroupKwargs,
    "get_scheduler": transformers.get_scheduler,
    "StaticCache": transformers.StaticCache,
    "AutoModelForCausalLM.from_pretrained": PreTrainedModel.from_pretrained,
    "AutoModelForCausalLM.from_config": PreTrainedModel._from_config,  # the Auto class forwards its kwargs here
    "AutoTokenizer.from_pretrained": transformers.PreTrainedTokenizerBase.from_pretrained,
    "gradient_checkpointing_enable": PreTrainedModel.gradient_checkpointing_enable,
    "papermill.execute_notebook": papermill.execute_notebook,
}


def sources() -> dict[str, str]:
    files = [*sorted((ROOT / "grpo_helpers").glob("*.py")), *sorted((ROOT / "launch").glob("*.py")),
             *sorted((ROOT / "bench").glob("*.py"))]
    out = {str(p.relative_to(ROOT)): p.read_text() for p in files}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            out[f"{notebook.name} cell {i}"] = "".join(cell["source"])
    return out


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def library_calls() -> list[tuple[str, str, str]]:
    """(where, callable name, keyword) for every keyword of every call to a callable in CALLABLES."""
    found = []
    for where, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            key = next((k for k in CALLABLES if name == k or name.endswith("." + k)
                        or ("." not in k and name.split(".")[-1] == k)), None)
            if key:
                found += [(where, key, kw.arg) for kw in node.keywords if kw.arg is not None]
    return found


def accepts(function, keyword: str) -> bool:
    function = inspect.unwrap(function)
    parameters = inspect.signature(function).parameters
    if keyword in parameters:
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            return False
        return re.search(rf"[\"']{keyword}[\"']|\b(?<!_){keyword}\s*=(?!=)", source) is not None
    return False


def test_the_scan_finds_our_library_calls():
    names = {name for _, name, _ in library_calls()}
    assert {"LoraConfig", "Accelerator", "get_scheduler", "StaticCache", "AutoModelForCausalLM.from_pretrained",
            "papermill.execute_notebook"} <= names


def forwarded(name: str, keyword: str) -> bool:
    """papermill hands the keywords it does not know to its engine, which sets them on nbclient's NotebookClient
    (`timeout_func`, say): such a keyword exists when the installed NotebookClient still has that setting."""
    from nbclient import NotebookClient

    return name == "papermill.execute_notebook" and keyword in NotebookClient.class_trait_names()


@pytest.mark.parametrize("where,name,keyword", library_calls())
def test_every_keyword_we_pass_exists(where, name, keyword):
    assert accepts(CALLABLES[name], keyword) or forwarded(name, keyword), (
        f"{where}: {name}(..., {keyword}=...) is not accepted by the installed version of {name}")


def _reads_only_the_old_name(model, **kwargs):
    torch_dtype = kwargs.pop("torch_dtype", None)
    return model, torch_dtype


def test_a_renamed_keyword_is_caught():
    assert not accepts(peft.LoraConfig, "lora_rank")
    assert not accepts(PreTrainedModel.from_pretrained, "torch_dtype_renamed_away")
    assert not accepts(_reads_only_the_old_name, "dtype")  # "torch_dtype" must not count as "dtype"
    assert accepts(_reads_only_the_old_name, "torch_dtype")
