"""3D lifting: 2D keypoint windows of the 17-joint skeleton -> root-relative 3D joints in metres.

KTPFormer (Peng et al., "KTPFormer: Kinematics and Trajectory Prior Knowledge-Enhanced Transformer for 3D Human
Pose Estimation", CVPR 2024), scaled down to run on a CPU: joint embedding, then `depth` pairs of a spatial
transformer block (attention among the 17 joints of a frame) and a temporal block (attention along each joint's
trajectory over the window). Following the paper, the first spatial block attends with Kinematics Prior Attention
(KPA: a graph convolution over the skeleton's kinematic topology plus a learnable fully connected graph adds
the prior to the tokens that form queries, keys and values) and the first temporal block with Trajectory Prior Attention (TPA:
the same over a trajectory graph joining each frame to its neighbours); later blocks are plain self-attention.
The head regresses every frame of the window (seq2seq); the app reads the last one (a causal window).

The window may be shorter than `frames` (MIN_FRAMES..frames, e.g. the first frames of a track): a T-frame window
uses the LAST T frame positions and the last T x T block of the trajectory graphs (see KTPFormer.forward), sliced
with the input's shape, so one export with a dynamic frame axis serves every T in range; at T == frames the result
is the fixed-window one, bit for bit.

MLPLifter is the single-frame baseline (Martinez et al. 2017 style residual MLP) trained on the same data.

Inputs are normalised by skeleton.normalize (numpy, outside the network): joints relative to their frame's
root, the root's trajectory relative to the last frame, divided by the window's median root-to-joint distance. Outputs are in the camera frame (x right, y down,
z forward), root-relative, in metres.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.apps.pose.skeleton import NUM_JOINTS, adjacency
from edgekit.errors import EdgekitError

WINDOW = 27
MIN_FRAMES = 1  # the shortest window KTPFormer (and its dynamic-shape artifact) takes
WEIGHTS_DIR = Path(__file__).parent / "weights"
KTPFORMER_WEIGHTS = WEIGHTS_DIR / "ktpformer.pt"
MLP_WEIGHTS = WEIGHTS_DIR / "mlp_lifter.pt"


def _normalized_graph(a: np.ndarray) -> torch.Tensor:
    """D^-1/2 A D^-1/2 (A with self loops), the GCN propagation matrix."""
    d = 1 / np.sqrt(a.sum(1))
    return torch.from_numpy((a * d[:, None] * d[None, :]).astype(np.float32))


def trajectory_graph(frames: int) -> np.ndarray:
    """(T, T) adjacency joining each frame to itself and its neighbours."""
    return np.eye(frames, dtype=np.float32) + np.eye(frames, k=1, dtype=np.float32) + np.eye(frames, k=-1,
                                                                                               dtype=np.float32)


class Attention(nn.Module):
    """Multi-head self-attention. With a `graph`, a prior attention (KPA/TPA): queries, keys and values come from
    the tokens plus a graph convolution of them over `graph` + a learnable fully connected graph."""

    def __init__(self, dim: int, heads: int, graph: np.ndarray | None = None, trajectory: bool = False):
        super().__init__()
        self.heads = heads
        # trajectory: the graph joins the frames of a window; a shorter sequence of T tokens (the last T frames
        # of the window) gets the last T x T block of the graph and of the learned graph
        self.trajectory = trajectory
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.attend = F.scaled_dot_product_attention  # swapped for edgekit.kernels.attention by use_kernel()
        if graph is not None:
            self.register_buffer("graph", _normalized_graph(graph))
            self.learned_graph = nn.Parameter(torch.zeros(graph.shape))
            self.prior = nn.Linear(dim, dim)
        else:
            self.graph = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        if self.graph is not None:
            graph = self.graph + self.learned_graph
            if self.trajectory:  # the block of the window's last `length` frames (all of it: the whole graph)
                # index_select, not graph[-length:, -length:]: torch.export pins a symbolic length to the window
                # on the strided view's contiguity, and TVM cannot lower a slice from a symbolic start
                keep = torch.arange(graph.shape[0] - length, graph.shape[0], device=x.device)
                graph = graph.index_select(0, keep).index_select(1, keep)
            x = x + self.prior(torch.matmul(graph, x))
        qkv = self.qkv(x)
        # slices, not chunk(): ExecuTorch's edge verification of split_with_sizes_copy pins a dynamic frame axis
        q, k, v = (qkv[..., i * dim:(i + 1) * dim] for i in range(3))
        split = lambda t: t.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        y = self.attend(split(q), split(k), split(v))
        return self.out(y.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, graph: np.ndarray | None = None,
                 trajectory: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads, graph, trajectory)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class KTPFormer(nn.Module):
    """(B, T, 17, 2) normalised 2D -> (B, T, 17, 3) root-relative 3D (metres)."""

    def __init__(self, frames: int = WINDOW, dim: int = 48, depth: int = 3, heads: int = 3, mlp_ratio: float = 2.0):
        super().__init__()
        self.config = {"frames": frames, "dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio}
        self.frames = frames
        self.embed = nn.Linear(2, dim)
        # Each joint token also gets a linear view of its whole frame: at this size the attention layers alone
        # learn the frame-wide 2D-to-depth relations slowly (measured: 106 mm MPJPE without it vs 73 mm for
        # the single-frame MLP after the same training).
        self.frame_embed = nn.Linear(2 * NUM_JOINTS, NUM_JOINTS * dim)
        self.joint_position = nn.Parameter(torch.zeros(1, NUM_JOINTS, dim))
        self.frame_position = nn.Parameter(torch.zeros(1, frames, dim))
        nn.init.trunc_normal_(self.joint_position, std=0.02)
        nn.init.trunc_normal_(self.frame_position, std=0.02)
        self.spatial = nn.ModuleList(Block(dim, heads, mlp_ratio, adjacency() if i == 0 else None)
                                     for i in range(depth))
        self.temporal = nn.ModuleList(Block(dim, heads, mlp_ratio, trajectory_graph(frames) if i == 0 else None,
                                            trajectory=True) for i in range(depth))
        for block in self.temporal:  # residual branches start at zero: the blocks start as the identity, so
            for layer in (block.attention.out, block.mlp[-1]):  # spatial-only pretraining carries over unchanged
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, temporal: bool = True) -> torch.Tensor:
        """temporal=False skips the temporal blocks (any T; spatial pretraining on single frames).

        A window of T < frames frames (MIN_FRAMES..frames) is a causal window cut short at its start: training
        (train_lifter.Data.batch) only ever shows windows whose newest frame sits at the last position, so its
        T frames take the LAST T frame positions (frame_position[:, -T:]) and the last T x T block of the
        trajectory graph (the normalised one and the learned one): the weights those frames had in every training
        window. (A graph normalised again for T frames instead measured the same within 0.2 mm MPJPE over the
        first 26 frames of 16 held-out sequences: 63.8 vs 63.6 mm.)"""
        b, t, j, _ = x.shape
        if temporal and not MIN_FRAMES <= t <= self.frames:
            raise EdgekitError(f"KTPFormer got a window of {t} frames; it takes {MIN_FRAMES}..{self.frames}. Pass "
                               f"the last {self.frames} (or fewer) 2D poses of the track.")
        x = self.embed(x) + self.frame_embed(x.reshape(b, t, -1)).reshape(b, t, j, -1) + self.joint_position
        for i, (spatial_block, temporal_block) in enumerate(zip(self.spatial, self.temporal)):
            x = spatial_block(x.reshape(b * t, j, -1)).reshape(b, t, j, -1)
            if temporal:
                x = x.transpose(1, 2).reshape(b * j, t, -1)
                if i == 0:  # the last t positions (index_select: TVM cannot lower a slice from a symbolic start)
                    x = x + self.frame_position.index_select(1, torch.arange(self.frames - t, self.frames,
                                                                             device=x.device))
                x = temporal_block(x).reshape(b, j, t, -1).transpose(1, 2)
        return _root_relative(self.head(self.norm(x)))


class MLPLifter(nn.Module):
    """Single-frame baseline: (B, 1, 17, 2) -> (B, 1, 17, 3) with residual MLP blocks."""

    def __init__(self, hidden: int = 256, blocks: int = 2):
        super().__init__()
        self.config = {"hidden": hidden, "blocks": blocks}
        self.frames = 1
        self.inp = nn.Linear(2 * NUM_JOINTS, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.out = nn.Linear(hidden, 3 * NUM_JOINTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        h = self.inp(x.reshape(b * t, -1))
        for block in self.blocks:
            h = h + block(h)
        return _root_relative(self.out(h).reshape(b, t, NUM_JOINTS, 3))


def _root_relative(joints: torch.Tensor) -> torch.Tensor:
    """The root (joint 0) at exactly the origin."""
    return joints - joints[..., :1, :]


ARCHITECTURES = {"KTPFormer": KTPFormer, "MLPLifter": MLPLifter}


def save(model: nn.Module, path: Path, **meta) -> None:
    """A state dict with the architecture's name and config beside the tensors (plain types: loads with
    weights_only=True)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"architecture": type(model).__name__, "config": model.config, "meta": meta,
                "state_dict": model.state_dict()}, path)


def load(path: str | Path | None = None) -> nn.Module:
    """A lifter from a file written by `save` (default: the shipped KTPFormer), in eval mode."""
    path = Path(path) if path else KTPFORMER_WEIGHTS
    if not path.is_file():
        raise EdgekitError(f"lifter weights {path} not found. Run `make train-pose` to train them, or pass the "
                           "path of a .pt file written by edgekit.apps.pose.train_lifter.")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("architecture") not in ARCHITECTURES:
        raise EdgekitError(f"{path}: not a lifter checkpoint (architecture {saved.get('architecture')!r}).")
    model = ARCHITECTURES[saved["architecture"]](**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def use_kernel(model: nn.Module) -> nn.Module:
    """Route the model's attention through edgekit.kernels.attention (eager host inference; not for training:
    the kernel has no backward, nor for export: compiles keep SDPA, which TVM swaps for the kernel itself)."""
    from edgekit.kernels import attention

    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = attention
    return model
