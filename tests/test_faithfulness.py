"""Our encoder against a plain restatement of UNITE's forward on the same tiny weights."""

import numpy as np
import pytest
import restated
import torch
import torch.nn.functional as F
from conftest import reference_image_processor
from PIL import Image

from unite_search.settings import EncoderSettings

SETTINGS = EncoderSettings()
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{content}\n"
    "Summary above {words} in one word:<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
)
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


def _image_inputs(path):
    proc = reference_image_processor(SETTINGS.min_pixels, SETTINGS.max_pixels)
    with Image.open(path) as img:  # the test images carry no EXIF orientation
        fetched = restated.fetch_image(img)
    out = proc(images=[fetched], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def _upstream_frames(video) -> np.ndarray:
    """Upstream's frames: a file through fetch_video (stage 1 is torchvision's antialiased bicubic on
    uint8 tensors, which PyTorch's interpolate computes), a list through fetch_image, then the
    processor's PIL bicubic."""
    if isinstance(video, list):
        return restated.frame_list(video, max_pixels=SETTINGS.video_max_pixels)
    frames = restated.sample_frames(video, fps=SETTINGS.fps, max_frames=SETTINGS.max_frames)
    n, height, width, _ = frames.shape
    h1, w1 = restated.video_frame_size(height, width, n, max_pixels=SETTINGS.video_max_pixels)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h1, w1), mode="bicubic", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    h2, w2 = restated.smart_resize(h1, w1, SETTINGS.min_pixels, SETTINGS.max_pixels)
    return np.stack([np.asarray(Image.fromarray(f).resize((w2, h2), Image.Resampling.BICUBIC)) for f in x])


def _video_inputs(video):
    """Frames as upstream makes them, then patches cut one by one, as the doc describes them."""
    frames = torch.from_numpy(_upstream_frames(video)).permute(0, 3, 1, 2).float() / 255
    frames = (frames - MEAN) / STD  # (T, 3, H, W)
    t, _, h, w = frames.shape
    rows = []
    for ti in range(0, t, 2):
        for by in range(0, h, 28):
            for bx in range(0, w, 28):
                for y in (by, by + 14):
                    for x in (bx, bx + 14):
                        patch = frames[ti : ti + 2, :, y : y + 14, x : x + 14]  # (2, 3, 14, 14)
                        rows.append(patch.permute(1, 0, 2, 3).reshape(-1))
    return torch.stack(rows), torch.tensor([[t // 2, h // 14, w // 14]])


def _reference_embed(reference, text=None, image=None, video=None, positions="1d"):
    model, tok = reference
    lm, visual = model.model.language_model, model.model.visual
    content, words, visuals = "", [], []
    if text is not None:
        words.append("sentence")
    for kind, path, fn in (("image", image, _image_inputs), ("video", video, _video_inputs)):
        if path is None:
            continue
        pv, grid = fn(path)
        n = int(grid.prod()) // 4
        content += "<|vision_start|>" + f"<|{kind}_pad|>" * n + "<|vision_end|>"
        words.append(kind)
        visuals.append((kind, pv, grid))
    prompt = PROMPT.format(content=content + (text or ""), words=" and ".join(words))
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        embeds = lm.embed_tokens(ids)
        for kind, pv, grid in visuals:
            out = visual(pv, grid_thw=grid)
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            token = model.config.image_token_id if kind == "image" else model.config.video_token_id
            embeds[ids == token] = feats
        length = ids.shape[1]
        if positions == "1d":
            pos = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        else:
            pos = _mrope_positions(ids[0], visuals, model.config)
        hidden = lm(inputs_embeds=embeds, position_ids=pos, use_cache=False).last_hidden_state
    vec = hidden[0, -1]
    return (vec / vec.norm()).numpy()


def _mrope_positions(ids, visuals, config):
    """Qwen2-VL's standard 3-D positions: vision tokens indexed by (t, h, w), text continues after."""
    pads = {config.image_token_id: None, config.video_token_id: None}
    grids = {("image" if k == "image" else "video"): g[0].tolist() for k, _, g in visuals}
    out, i, nxt = [], 0, 0
    ids = ids.tolist()
    while i < len(ids):
        if ids[i] in pads:
            kind = "image" if ids[i] == config.image_token_id else "video"
            t, h, w = grids[kind]
            h, w = h // 2, w // 2
            for ti in range(t):
                for hi in range(h):
                    for wi in range(w):
                        out.append((nxt + ti, nxt + hi, nxt + wi))
            i += t * h * w
            nxt = max(max(p) for p in out) + 1
        else:
            out.append((nxt, nxt, nxt))
            nxt += 1
            i += 1
    return torch.tensor(out).T.unsqueeze(1)  # (3, 1, L)


CASES = {
    "text": dict(text="A reindeer walks across the snow at dusk."),
    "image": dict(image="image"),
    "video": dict(video="video"),
    "image+text": dict(image="image", text="What is the name of this place?"),
    "video+text": dict(video="video", text="same scene at night"),
    "textured video": dict(video="textured"),  # photo-like frames: kernels differ most there
    "frames": dict(video="frames"),  # a video given as 5 frames: fetched as images, padded to 6
    "frames+text": dict(video="frames", text="same scene at night"),
}
_RNG = np.random.default_rng(11)
FRAMES = [_RNG.integers(0, 256, (112, 140, 3), dtype=np.uint8) for _ in range(5)]


@pytest.fixture(scope="module")
def clips(media, tmp_path_factory):
    """The shared media and a 2 s clip of 200x300 textured frames (smooth ramps, edges and noise)."""
    import av

    path = tmp_path_factory.mktemp("faithful") / "textured.mp4"
    yy, xx = np.mgrid[0:200, 0:300]
    rng = np.random.default_rng(5)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 300, 200, "yuv420p"
        for i in range(20):
            base = np.stack([(xx + 9 * i) % 256, yy * 1.2, ((xx // 9 + yy // 13 + i) % 2) * 200.0], -1)
            frame = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {**media, "textured": path}


def _resolve(case, media):
    return {k: (FRAMES if v == "frames" else media[v]) if k in ("image", "video") else v for k, v in case.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_encoder_equals_restated_unite_forward(name, encoder, reference, clips):
    item = _resolve(CASES[name], clips)
    ours = encoder.encode([item])[0]
    expected = _reference_embed(reference, **item)
    assert np.abs(ours - expected).max() <= 1e-5
    assert abs(float(np.linalg.norm(ours)) - 1) < 1e-5


@pytest.mark.parametrize("name", ["image", "video+text"])
def test_3d_mrope_positions_give_another_vector(name, encoder, reference, media):
    item = _resolve(CASES[name], media)
    ours = encoder.encode([item])[0]
    mrope = _reference_embed(reference, positions="3d", **item)
    assert np.abs(ours - mrope).max() > 1e-3


def test_vectors_depend_on_content(encoder, media):
    vecs = encoder.encode(
        [{"text": "a red circle"}, {"text": "a blue square"}, {"image": media["image"]}, {"image": media["image2"]}]
    )
    sims = vecs @ vecs.T
    assert sims[0, 1] < 0.999 and sims[2, 3] < 0.999


def test_batch_invariance(encoder, media):
    items = [
        {"text": "short"},
        {"image": media["image"]},
        {"text": "a considerably longer sentence that pads every other row of the batch " * 3},
        {"video": media["video"], "text": "at night"},
        {"video": media["video2"]},
        {"image": media["image2"], "text": "composed"},
        {"text": "short"},
    ]
    batched = encoder.encode(items, token_budget=10**6)  # everything in one padded batch
    singles = np.stack([encoder.encode([it])[0] for it in items])
    assert np.abs(batched - singles).max() <= 1e-5
    shuffled = encoder.encode(items[::-1], token_budget=10**6)[::-1]
    assert np.abs(shuffled - singles).max() <= 1e-5
    assert np.array_equal(batched[0], batched[6])
