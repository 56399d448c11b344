"""Vision-language path on the tiny random LLaVA: image prompts, batches, head divergence of the
image tokens against a plain Hugging Face LLaVA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probes import make_probes
from tests.conftest import write_jsonl
from tests.hf_heads import divergence, head_outputs
from workbench_cli.cli import main
from workbench.errors import InputError
from workbench.forward import last_logits
from workbench.models import MODELS
from workbench.prompts import Prompt, PromptSet, load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.tiny import TinyVisionConfig, tiny_image_processor
from workbench.tokens import make_batches, tokenize_prompt, tokenize_prompt_set

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def tiny_llava_hf():
    """An independent plain Hugging Face copy of tiny-llava (same seed, never wrapped)."""
    return MODELS["tiny-llava"].build()[0].eval()


@pytest.fixture
def vlm_prompts(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "img/a.png")
    np.save(tmp_path / "img/b.npy", rng.random((32, 32, 3)).astype(np.float32))
    rows = [{"id": "a", "text": f"USER: <image>\n{QUESTION} ASSISTANT:", "image": "img/a.png",
             "segments": {"question": [14, 14 + len(QUESTION)]}},
            {"id": "b", "text": "USER: <image>\nDescribe it. ASSISTANT:", "image": "img/b.npy"}]
    return write_jsonl(tmp_path / "vlm.jsonl", rows)


def pixels(path) -> torch.Tensor:
    """``[1, 3, 32, 32]`` pixel values made independently of the workbench's image loading."""
    image = np.load(path) if str(path).endswith(".npy") else np.asarray(Image.open(path))
    if image.dtype != np.uint8:
        image = np.round(image * 255).astype(np.uint8)
    return tiny_image_processor(TinyVisionConfig())(images=[image],
                                                    return_tensors="pt")["pixel_values"]


def test_tiny_llava_loads(tiny_llava):
    info = tiny_llava.info
    assert info.parity.ok and info.parity.max_abs_diff == 0.0
    assert (info.n_layers, info.n_heads) == (4, 4)
    assert info.architecture == "LlavaForConditionalGeneration"
    assert tiny_llava.images.token == "<image>" and tiny_llava.images.n_tokens == 16
    assert info.details["image_tokens_per_image"] == 16


def test_image_prompts_tokenize(tiny_llava, vlm_prompts):
    prompt_set = load_prompt_set(vlm_prompts)
    assert prompt_set.prompts[0].image == str(vlm_prompts.parent / "img/a.png")
    tok = tokenize_prompt(prompt_set.prompts[0], tiny_llava.tokenizer, prepend_bos=False,
                          images=tiny_llava.images)
    plain = tiny_llava.tokenizer(prompt_set.prompts[0].text, add_special_tokens=False).input_ids
    at = plain.index(512)
    assert tok.input_ids.tolist() == plain[:at] + [512] * 16 + plain[at + 1:]
    assert tok.segments["image"].tolist() == list(range(at, at + 16))
    assert (tok.offsets[at:at + 16] == [6, 13]).all()  # every copy spans "<image>"
    question = tiny_llava.tokenizer(QUESTION, add_special_tokens=False).input_ids
    assert tok.input_ids[tok.segments["question"]].tolist() == question
    assert torch.equal(tok.pixel_values, pixels(vlm_prompts.parent / "img/a.png")[0])
    # an in-memory array works like the .npy file holding it
    array = np.load(vlm_prompts.parent / "img/b.npy")
    from_array = tokenize_prompt(Prompt("m", "<image> hi", image=array), tiny_llava.tokenizer,
                                 prepend_bos=False, images=tiny_llava.images)
    assert torch.equal(from_array.pixel_values, pixels(vlm_prompts.parent / "img/b.npy")[0])


def test_mixed_batch_matches_hf(tiny_llava, tiny_llava_hf, vlm_prompts):
    """Prompts with and without an image in one padded batch: last-token logits as alone."""
    prompts = load_prompt_set(vlm_prompts).prompts + (Prompt("t", "USER: no image here"),)
    tokenized = [tokenize_prompt(p, tiny_llava.tokenizer, prepend_bos=False,
                                 images=tiny_llava.images) for p in prompts]
    [batch] = make_batches(tokenized, 3, 0, sort_by_length=False)
    assert batch.pixel_values.shape == (2, 3, 32, 32)
    got = last_logits(tiny_llava, batch)
    for i, tok in enumerate(tokenized):
        extra = {"pixel_values": pixels(prompts[i].image)} if prompts[i].image else {}
        with torch.inference_mode():
            want = tiny_llava_hf(input_ids=torch.as_tensor(tok.input_ids)[None], **extra).logits
        torch.testing.assert_close(got[i], want[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("removal", ["drop", "filler"])
def test_image_divergence_matches_hf(tiny_llava, tiny_llava_hf, vlm_prompts, tmp_path, removal):
    probes = make_probes(["head_divergence"], {"head_divergence": {"segment": "image",
                                                                   "removal": removal}})
    run = execute_run(tiny_llava, load_prompt_set(vlm_prompts), probes,
                      RunOptions(runs_dir=tmp_path / "runs", batch_size=2, progress=False))
    table = run.read_table("head_divergence").to_pandas()
    dot = tiny_llava.tokenizer(".", add_special_tokens=False).input_ids[0]
    for prompt in load_prompt_set(vlm_prompts).prompts:
        tok = tokenize_prompt(prompt, tiny_llava.tokenizer, prepend_bos=False,
                              images=tiny_llava.images)
        ids = torch.as_tensor(tok.input_ids)
        image = ids == 512
        without_ids = ids[~image] if removal == "drop" else ids.masked_fill(image, dot)
        with_ = head_outputs(tiny_llava_hf, 4, input_ids=ids[None],
                             pixel_values=pixels(prompt.image))
        without = head_outputs(tiny_llava_hf, 4, input_ids=without_ids[None])
        want = divergence(with_, without, len(ids) - 1, len(without_ids) - 1).numpy()
        rows = table[(table.metric == "vhd") & (table.prompt_id == prompt.id)]
        got = rows.pivot(index="layer", columns="head", values="value").to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert want.max() > 0.1
    assert len(table[table.metric == "mean_t_vhd"]) == 1


def test_cli_runs_vlm_divergence(vlm_prompts, tmp_path, capsys):
    try:
        main(["run", "--model", "tiny-llava", "--prompts", str(vlm_prompts), "--device", "cpu",
              "--probes", "head_divergence,attention_entropy", "--param",
              "head_divergence.segment=image", "--runs-dir", str(tmp_path / "runs"),
              "--no-progress"])
    except SystemExit as exc:
        assert exc.code == 0, capsys.readouterr().err
    assert "complete:" in capsys.readouterr().out


def test_bad_image_input(tiny_llava, tiny_llama, vlm_prompts, tmp_path):
    missing = write_jsonl(tmp_path / "missing.jsonl", [
        {"id": "m", "text": "<image> hi", "image": "nope.png"}])
    with pytest.raises(InputError, match=r"missing.jsonl:1: field 'image': .*nope.png.* is not a "
                                         "file"):
        load_prompt_set(missing)
    image = str(vlm_prompts.parent / "img/a.png")
    cases = [(Prompt("p", "no placeholder", image=image), tiny_llava, "exactly once"),
             (Prompt("p", "<image> and <image>", image=image), tiny_llava, "found 2"),
             (Prompt("p", "<image> without file"), tiny_llava, "has no 'image'"),
             (Prompt("p", "<image> hi", image=image), tiny_llama, "not a .*vision-language"),
             (Prompt("p", "<image> hi", image=np.zeros((4, 4, 2))), tiny_llava, "must be "
              r"\[height, width, 3\]"),
             (Prompt("p", "<image> hi", segments={"image": (0, 2)}, image=image), tiny_llava,
              "'image' is reserved")]
    for prompt, model, message in cases:
        with pytest.raises(InputError, match=f"prompt 'p'.*{message}"):
            tokenize_prompt(prompt, model.tokenizer, prepend_bos=False, images=model.images)
    tokenized = tokenize_prompt_set(load_prompt_set(vlm_prompts), tiny_llava.tokenizer,
                                    prepend_bos=False, images=tiny_llava.images)
    probe = make_probes(["head_divergence"], {"head_divergence": {
        "segment": "image", "removal": "mean_embed"}})[0]
    with pytest.raises(InputError, match="prompt 'a', segment 'image': removal=mean_embed"):
        probe.check(tokenized, tiny_llava)
    text_only = PromptSet((Prompt("t", "USER: hello there"),), ())
    probe = make_probes(["head_divergence"], {"head_divergence": {"segment": "image"}})[0]
    with pytest.raises(InputError, match="prompt 't' has no segment 'image'"):
        probe.check(tokenize_prompt_set(text_only, tiny_llava.tokenizer, prepend_bos=False,
                                        images=tiny_llava.images), tiny_llava)
