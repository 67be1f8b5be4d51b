"""Single-file checkpoints served offline: the shipped configs and tokenizer, the architecture told
from the keys, and a tiny checkpoint's images equal to those of the same weights as a diffusers folder."""

from __future__ import annotations

import base64
import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from sdserve_backend.pipelines.single_file import (
    ARCHITECTURES,
    CLIP_PREFIXES,
    OPEN_CLIP_PREFIXES,
    ConfigFolder,
    clip_tokenizer,
    detect_architecture,
    read_shapes,
    text_config_from,
    unet_config_from,
    vae_config_from,
)
from sdserve_backend.single_file_export import clip_to_original, open_clip_to_original, unet_to_original, vae_to_original
from sdserve_backend.tiny_model import make_tiny_model
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, make_repository, serving
from single_file_models import published_rules_folder, single_file

PROMPT = "a photo of a cat"


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_the_shipped_clip_tokenizer_gives_clips_ids() -> None:
    tokenizer = clip_tokenizer(ConfigFolder("sd15").json("tokenizer/tokenizer_config.json"))
    assert tokenizer(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    padded = tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    assert padded[7:] == [49407] * 70


@pytest.mark.parametrize("architecture", ["sd21", "sdxl_base", "sdxl_refiner"])
def test_the_second_tokenizer_of_sd2_and_sdxl_pads_with_the_exclamation_mark(architecture: str) -> None:
    name = "tokenizer" if architecture == "sd21" else "tokenizer_2"
    tokenizer = clip_tokenizer(ConfigFolder(architecture).json(f"{name}/tokenizer_config.json"))
    padded = tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    assert padded[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert padded[7:] == [0] * 70
    assert tokenizer.convert_ids_to_tokens(0) == "!"


# ---------------------------------------------------------------------------------------------
# The published architectures, from a key/shape listing (meta tensors, no weights)

# Parameter counts of the published models.
PUBLISHED_PARAMETERS = {
    ("sd15", "unet"): 859_520_964,
    ("sd21", "unet"): 865_910_724,
    ("sdxl_base", "unet"): 2_567_463_684,
    ("sd15", "vae"): 83_653_863,
    ("sdxl_base", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    ("sdxl_base", "text_encoder"): 123_060_480,
    ("sdxl_base", "text_encoder_2"): 694_659_840,
}


def empty(model_class: type, config: dict) -> torch.nn.Module:
    with init_empty_weights():
        if model_class in (CLIPTextModel, CLIPTextModelWithProjection):
            return model_class(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
        return model_class.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def shapes_of(state: dict[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + key: tuple(value.shape) for key, value in state.items()}


def published_listing(architecture: str, in_channels: int = 4) -> tuple[dict, dict[str, torch.nn.Module]]:
    """The key/shape listing of a checkpoint of the published architecture, and its empty models."""
    configs = ConfigFolder(architecture)
    models: dict[str, torch.nn.Module] = {
        "unet": empty(UNet2DConditionModel, {**configs.json("unet/config.json"), "in_channels": in_channels}),
        "vae": empty(AutoencoderKL, configs.json("vae/config.json")),
    }
    unet = models["unet"]
    attention = [kind.startswith("CrossAttn") for kind in unet.config.up_block_types]
    listing = shapes_of(unet_to_original(unet.state_dict(), unet.config.layers_per_block, attention), "model.diffusion_model.")
    listing |= shapes_of(vae_to_original(models["vae"].state_dict(), 4), "first_stage_model.")
    family = "sd21" if architecture.startswith("sd21") else architecture
    if family in CLIP_PREFIXES:
        models["text_encoder"] = empty(CLIPTextModel, configs.json("text_encoder/config.json"))
        listing |= shapes_of(clip_to_original(models["text_encoder"].state_dict()), CLIP_PREFIXES[family])
    if family in OPEN_CLIP_PREFIXES:
        name = "text_encoder" if family == "sd21" else "text_encoder_2"
        model_class = CLIPTextModel if family == "sd21" else CLIPTextModelWithProjection
        models[name] = empty(model_class, configs.json(f"{name}/config.json"))
        converted = open_clip_to_original(models[name].state_dict(), extra_layer=family == "sd21")
        listing |= shapes_of(converted, OPEN_CLIP_PREFIXES[family])
    return listing, models


@pytest.mark.parametrize("in_channels", [4, 9], ids=["base", "inpainting"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_detection_and_the_shipped_configs_give_the_published_models(architecture: str, in_channels: int) -> None:
    listing, published = published_listing(architecture, in_channels)
    prediction = {"sd21_base": "epsilon", "sd21": "v_prediction"}.get(architecture)
    assert detect_architecture(listing, prediction) == architecture

    configs = ConfigFolder(architecture)
    family = "sd21" if architecture.startswith("sd21") else architecture
    derived = {
        "unet": empty(UNet2DConditionModel, unet_config_from(listing, configs.json("unet/config.json"), architecture)),
        "vae": empty(AutoencoderKL, vae_config_from(listing, configs.json("vae/config.json"), "first_stage_model.")),
    }
    if family in CLIP_PREFIXES:
        config = text_config_from(listing, configs.json("text_encoder/config.json"), CLIP_PREFIXES[family], False)
        derived["text_encoder"] = empty(CLIPTextModel, config)
    if family in OPEN_CLIP_PREFIXES:
        name = "text_encoder" if family == "sd21" else "text_encoder_2"
        config = text_config_from(listing, configs.json(f"{name}/config.json"), OPEN_CLIP_PREFIXES[family], True,
                                  drop_last_layer=family == "sd21")
        derived[name] = empty(CLIPTextModel if family == "sd21" else CLIPTextModelWithProjection, config)

    assert derived.keys() == published.keys()
    for name, model in derived.items():
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in published[name].state_dict().items()}, name
        # What the shapes cannot show comes from the shipped config unchanged.
        for field in ("attention_head_dim", "num_attention_heads", "norm_num_groups", "sample_size", "hidden_act"):
            assert getattr(model.config, field, None) == getattr(published[name].config, field, None), (name, field)
        if (architecture, name) in PUBLISHED_PARAMETERS and in_channels == 4:
            assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[(architecture, name)], name
    assert derived["unet"].config.in_channels == in_channels


def test_an_unknown_layout_is_refused_saying_what_is_known() -> None:
    with pytest.raises(ValueError, match="not a Stable Diffusion checkpoint in the original single-file layout.*known: SD 1.x"):
        detect_architecture({"model.weight": (4, 4)})
    with pytest.raises(ValueError, match="looks like a diffusers UNet file"):
        detect_architecture({"conv_in.weight": (320, 4, 3, 3)})
    listing, _ = published_listing("sd15")
    with pytest.raises(ValueError, match="needs an SD 2.x checkpoint"):
        detect_architecture(listing, "v_prediction")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"prediction_type": "v"}, "config parameter 'prediction_type' must be one of epsilon, v_prediction"),
        ({"vae_weights": "no-such-vae.safetensors"}, "config parameter 'vae_weights': .*no-such-vae.safetensors is not found"),
        ({"text_encoder_weights": "config.json"}, "is not a .safetensors file or a folder"),
    ],
)
def test_bad_checkpoint_parameters_are_named(tmp_path: Path, parameters: dict, message: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        model_settings.read_checkpoint_options(tmp_path, parameters)


# ---------------------------------------------------------------------------------------------
# In process: the other tiny architectures


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """(diffusers folder, the same as one checkpoint) of a tiny variant, made once."""
    work = tmp_path_factory.mktemp("single_file_pairs")
    made: dict[str, tuple[Path, Path]] = {}

    def pair(variant: str) -> tuple[Path, Path]:
        if variant not in made:
            tiny = make_tiny_model(work / f"tiny_{variant}", variant, seed=0)
            folder = published_rules_folder(tiny, work / f"{variant}_folder", variant)
            made[variant] = folder, single_file(folder, work / f"{variant}.safetensors")
        return made[variant]

    return pair


def equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


def test_an_sd21_checkpoint_draws_what_its_diffusers_folder_draws(tiny_pairs: Callable[[str], tuple[Path, Path]]) -> None:
    folder, checkpoint = tiny_pairs("sd21")
    images = []
    for weights in (folder, checkpoint):
        components = load_components(weights, torch.device("cpu"), torch.float32)
        assert components.scheduler_config["prediction_type"] == "v_prediction"
        assert components.unet.config.upcast_attention
        [image] = TextToImagePipeline(components)(
            [GenerationRequest(prompts=[PROMPT], seed=3, negative_prompts=["ugly"])], GenerationSettings(128, 128, 4, 7.5, ""))
        images.append(image)
    assert np.array_equal(images[0], images[1]) and images[0].std() > 1


def test_an_older_checkpoint_without_the_text_model_level_loads_the_same_text_encoder(
        tiny_pairs: Callable[[str], tuple[Path, Path]], tmp_path: Path) -> None:
    folder, checkpoint = tiny_pairs("sd")
    older = tmp_path / "older.safetensors"
    save_file({key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
               for key, value in load_file(str(checkpoint)).items()}, str(older))
    ours = load_components(older, torch.device("cpu"), torch.float32)
    theirs = load_components(folder, torch.device("cpu"), torch.float32)
    assert equal_weights(ours.text_encoder, theirs.text_encoder)


def test_an_inpainting_checkpoint_loads_its_9_channel_unet(tiny_pairs: Callable[[str], tuple[Path, Path]]) -> None:
    folder, checkpoint = tiny_pairs("sd-inpaint")
    ours = load_components(checkpoint, torch.device("cpu"), torch.float32)
    theirs = load_components(folder, torch.device("cpu"), torch.float32)
    assert ours.is_inpainting and ours.unet.config.in_channels == 9
    for name in ("unet", "vae", "text_encoder"):
        assert equal_weights(getattr(ours, name), getattr(theirs, name)), name


def test_a_refiner_checkpoint_loads_what_its_diffusers_folder_loads(tiny_pairs: Callable[[str], tuple[Path, Path]]) -> None:
    folder, checkpoint = tiny_pairs("sdxl_refiner")
    assert detect_architecture(read_shapes(checkpoint)) == "sdxl_refiner"
    ours = load_components(checkpoint, torch.device("cpu"), torch.float32)
    theirs = load_components(folder, torch.device("cpu"), torch.float32)
    assert ours.text_encoder is None and ours.tokenizer is None and ours.requires_aesthetics_score
    assert ours.tokenizer_2.pad_token == "!"
    assert not ours.force_zeros_for_empty_prompt
    assert ours.scheduler_class is theirs.scheduler_class
    for name in ("unet", "vae", "text_encoder_2"):
        assert equal_weights(getattr(ours, name), getattr(theirs, name)), name


# ---------------------------------------------------------------------------------------------
# Through the server: tiny checkpoints with no config folder


def config_text(variant: str, **parameters: str) -> str:
    """The tiny model's config.pbtxt with `parameters` set (the weights one replaced)."""
    text = (PROJECT_ROOT / "model_repository" / f"tiny_{variant}" / "config.pbtxt").read_text()
    head, _, _ = text.rpartition("parameters [")
    entries = [("image_height", "128"), ("image_width", "128"), ("steps", "4"), *parameters.items()]
    body = ",\n".join(f'  {{\n    key: "{key}"\n    value: {{ string_value: "{value}" }}\n  }}' for key, value in entries)
    return f"{head}parameters [\n{body}\n]\n"


def add_model(root: Path, name: str, variant: str, files: dict[str, Path], **parameters: str) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    # Hard links: a symlink out of the model's folder is refused like any path outside it.
    for file_name, source in files.items():
        os.link(source, version / file_name)
    (root / name / "config.pbtxt").write_text(config_text(variant, **parameters))
    return root / name


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    work = tmp_path_factory.mktemp("single_file")
    models = work / "models"
    models.mkdir()
    for variant in ("sd", "sdxl"):
        tiny = make_tiny_model(work / f"tiny_{variant}", variant, seed=0)
        folder = published_rules_folder(tiny, models / f"{variant}_folder" / "1", variant)
        checkpoint = single_file(folder, work / f"{variant}.safetensors")
        add_model(models, f"{variant}_folder", variant, {})
        # Only the checkpoint in the version folder: no weights parameter, no config folder.
        add_model(models, f"{variant}_file", variant, {"model.safetensors": checkpoint})
    sd = work / "sd.safetensors"
    full = load_file(str(sd))
    unet_only = work / "sd_unet_only.safetensors"
    save_file({k: v for k, v in full.items() if k.startswith("model.diffusion_model.")}, str(unet_only))
    vae = work / "sd_vae.safetensors"
    # A separate VAE as VAE files are shared: the original layout without the prefix.
    save_file({k.removeprefix("first_stage_model."): v for k, v in full.items() if k.startswith("first_stage_model.")}, str(vae))
    add_model(models, "sd_separate_parts", "sd", {"model.safetensors": unet_only, "vae.safetensors": vae, "base.safetensors": sd},
              weights="model.safetensors", vae_weights="vae.safetensors", text_encoder_weights="base.safetensors")
    add_model(models, "sd_no_text_encoder", "sd", {"model.safetensors": unet_only, "vae.safetensors": vae},
              weights="model.safetensors", vae_weights="vae.safetensors")
    add_model(models, "sd_no_vae", "sd", {"model.safetensors": unet_only, "base.safetensors": sd},
              weights="model.safetensors", text_encoder_weights="base.safetensors")
    unknown = work / "unknown.safetensors"
    save_file({"layer.weight": torch.zeros(2, 2)}, str(unknown))
    add_model(models, "unknown_layout", "sd", {"model.safetensors": unknown})
    add_model(models, "sd_bad_prediction", "sd", {"model.safetensors": sd}, prediction_type="v_prediction")

    loaded = ["sd_folder", "sd_file", "sdxl_folder", "sdxl_file"]
    arguments = ["--model-control-mode", "explicit", *(argument for name in loaded for argument in ("--load-model", name))]
    repository = make_repository(work / "repo", {path.name: path for path in models.iterdir()})
    with serving(repository, *arguments, timeout_s=600) as addresses:
        yield addresses


def load(server: ServerAddresses, model: str) -> tuple[int, str]:
    """Triton's repository load: its status and body (empty on success)."""
    request = urllib.request.Request(f"http://{server.http}/v2/repository/models/{model}/load", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def generated(server: ServerAddresses, model: str, **body: object) -> np.ndarray:
    status, reply = http_json(server, "POST", f"/v2/models/{model}/generate",
                              {"prompt": PROMPT, "negative_prompt": "ugly", "seed": 7, "steps": 4, **body})
    assert status == 200, reply
    [encoded] = reply["generated_image"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_a_lone_checkpoint_draws_what_its_diffusers_folder_draws(server: ServerAddresses, variant: str) -> None:
    from_file = generated(server, f"{variant}_file")
    assert from_file.shape == (128, 128, 3) and from_file.std() > 1
    assert np.array_equal(from_file, generated(server, f"{variant}_folder"))


def test_the_vae_and_text_encoders_may_come_from_other_files(server: ServerAddresses) -> None:
    status, reply = load(server, "sd_separate_parts")
    assert status == 200, reply
    assert np.array_equal(generated(server, "sd_separate_parts"), generated(server, "sd_folder"))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("sd_no_text_encoder", "holds no text encoder under 'cond_stage_model.transformer.' (sd15); give them with "
                               "the model parameter text_encoder_weights"),
        ("sd_no_vae", "holds no VAE; give one with the model parameter vae_weights"),
        ("unknown_layout", "not a Stable Diffusion checkpoint in the original single-file layout"),
        ("sd_bad_prediction", "prediction_type 'v_prediction' needs an SD 2.x checkpoint"),
    ],
)
def test_an_incomplete_or_unknown_checkpoint_fails_its_load_saying_why(server: ServerAddresses, model: str,
                                                                       message: str) -> None:
    status, reply = load(server, model)
    # The server answers a failed load as Triton does; the backend's reason is in the message.
    assert status >= 400, reply
    assert message in reply, reply
