"""The bundle, the one contract between host and device: its format, defined, validated, read and written here.

A bundle is a directory::

    model.json    BundleMeta: format version, model, labels, input preprocessing, program hash, ...
    model.pte     the ExecuTorch program (name in model.json's ``pte``, always inside the bundle): ``forward``
                  takes contiguous NCHW memory, as every ExecuTorch runtime passes; ``forward_channels_last``
                  takes NHWC memory, what the app runs (model.json's ``method``; ``methods`` declares both)
    model.bpte    the same program with the golden inputs and logits inside, in ExecuTorch's BundledProgram
                  format, for ExecuTorch's own tools (optional: not read by the app, not shipped to devices)
    golden.npz    a few preprocessed inputs and raw frames, with the logits the host's runtime gave for them
    report.json   export's verification figures, and report.md for people
    confusion.png the program's confusion matrix and per-class top-1 (optional: bundles before it lack it)

``export`` writes it with ``write_bundle``; the edge app, ``deploy`` and the device tests read it
with ``read_meta`` / ``read_bundle`` / ``load_bundle``. None of this needs torch.
"""

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import typing
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from .command import UserError
from .files import cache_root
from .native import NativeError, Runner
from .native.vet import vet
from .preprocess import InputSpec

FORMAT = 2  # bump when a reader of the previous format would misread a new bundle
# 2: the app's program input may be channels-last (NHWC memory), which a format-1 reader would feed NCHW memory.
# This reader takes the memory order from the program itself, so format 1 still reads right. ``method`` and
# ``methods`` came later within format 2: an app that does not know them runs ``forward``, which reads right.
OLDEST_FORMAT = 1
META = "model.json"
REPORTS = ("report.json", "report.md")
CONFUSION_PICTURE = "confusion.png"
PICTURES = (CONFUSION_PICTURE,)  # for people reading the report: optional, and not shipped to devices
BUNDLED_PROGRAM = "model.bpte"  # for ExecuTorch's own tools: optional, and not shipped to devices
OPTIONAL = (*PICTURES, BUNDLED_PROGRAM)
FORWARD = "forward"  # takes contiguous NCHW memory: what ExecuTorch's runtimes and mobile libraries pass
APP_METHOD = "forward_channels_last"  # takes NHWC memory: what the app's preprocessor produces, no transpose
MAX_METHODS = 16
META_MAX_BYTES = 1 << 20  # model.json: labels of 1000 classes take 20 kB
PTE_MAGIC_AT = slice(4, 6)  # a .pte is a flatbuffer whose file identifier starts "ET" at byte 4
PTE_MIN_BYTES = 64  # the flatbuffer root offset, identifier and extended header come first
REEXPORT = "re-export it (make export CKPT=...)"
PREVIOUS = ".previous-"  # a bundle set aside while its replacement is renamed in


class BundleError(UserError):
    """A bundle that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class TensorDecl:
    """A method's input or output as a caller passes or gets it: shape, the order its dimensions lie in
    memory (outermost first: 0 1 2 3 is contiguous NCHW, 0 2 3 1 is NHWC) and element type."""

    shape: tuple[int, ...]
    dim_order: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not 1 <= len(self.shape) <= 8 or not all(1 <= d <= 1 << 20 for d in self.shape):
            raise ValueError(f"shape {list(self.shape)[:9]} needs 1 to 8 dimensions of 1 to {1 << 20}")
        if sorted(self.dim_order) != list(range(len(self.shape))):
            raise ValueError(
                f"dim_order {list(self.dim_order)[:9]} is not an order of the {len(self.shape)} dimensions"
            )
        if self.dtype != "float32":
            raise ValueError(f"dtype {self.dtype[:20]!r}: this app feeds and reads float32 only")

    @classmethod
    def of(cls, shape: tuple[int, ...], dim_order: tuple[int, ...]) -> "TensorDecl":
        return cls(tuple(int(d) for d in shape), tuple(int(d) for d in dim_order))


@dataclass(frozen=True)
class MethodDecl:
    """One method of the program: its input and its first output."""

    input: TensorDecl
    output: TensorDecl


@dataclass(frozen=True)
class BundleMeta:
    """model.json. ``format`` says how to read the rest; fields are checked on construction."""

    name: str
    arch: str
    width_mult: float
    num_classes: int
    labels: tuple[str, ...]
    input: InputSpec
    quantization: dict[str, str]  # "scheme": qat-int8 | ptq-int8 | fp32, and how weights/activations are stored
    pte_sha256: str
    golden_logit_tolerance: float  # another CPU's kernels may round differently, within this
    source_checkpoint: str
    source_checkpoint_sha256: str
    versions: dict[str, str]  # the packages that built the program
    created: str
    format: int = FORMAT
    pte: str = "model.pte"
    golden: str = "golden.npz"
    method: str = FORWARD  # the method the app runs
    methods: dict[str, MethodDecl] = field(default_factory=dict)  # each method's input and output; {}: undeclared

    def __post_init__(self) -> None:
        if not OLDEST_FORMAT <= self.format <= FORMAT:
            raise ValueError(f"format {self.format} is not one of {OLDEST_FORMAT}..{FORMAT}")
        if not self.name or not self.arch or self.width_mult <= 0:
            raise ValueError("name and arch must be non-empty and width_mult positive")
        if self.num_classes < 1 or len(self.labels) != self.num_classes or not all(self.labels):
            raise ValueError(
                f"{len(self.labels)} labels for num_classes {self.num_classes}: want one non-empty label per class"
            )
        if not isinstance(self.quantization.get("scheme"), str):
            raise ValueError("quantization has no scheme")
        if not re.fullmatch(r"[0-9a-f]{64}", self.pte_sha256):
            raise ValueError("pte_sha256 is not a sha256 hex digest")
        if not self.golden_logit_tolerance >= 0:
            raise ValueError("golden_logit_tolerance must be >= 0")
        self._check_methods()
        for key in ("pte", "golden"):
            name = getattr(self, key)
            if name in ("", ".", "..", META, *REPORTS, *OPTIONAL) or Path(name).name != name or "\\" in name:
                raise ValueError(f"{key} {name!r} must name a file inside the bundle")

    def _check_methods(self) -> None:
        if not self.method or len(self.methods) > MAX_METHODS:
            raise ValueError(f"method must be non-empty and methods at most {MAX_METHODS}")
        if self.methods and self.method not in self.methods:
            raise ValueError(f"method {self.method[:40]!r} is not one of methods ({', '.join(self.methods)})")
        size = self.input.size
        for name, decl in self.methods.items():
            if decl.input.shape != (1, 3, size, size) or decl.output.shape != (1, self.num_classes):
                raise ValueError(
                    f"methods.{name[:40]} takes {list(decl.input.shape)} and returns {list(decl.output.shape)}; "
                    f"input.size and num_classes say [1, 3, {size}, {size}] and [1, {self.num_classes}]"
                )

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the bundle, model.json first."""
        return META, self.pte, self.golden, *REPORTS

    def to_json(self) -> bytes:
        meta = asdict(self) | {"input": self.input.to_json(), "labels": list(self.labels)}
        return (json.dumps({"format": self.format, **meta}, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: object, where: Path) -> "BundleMeta":
        if not isinstance(raw, dict):
            raise BundleError(f"{where} is not a JSON object; {REEXPORT}")
        version = raw.get("format")
        if version is None:
            raise BundleError(f"{where} has no format version: the bundle predates format {OLDEST_FORMAT}; {REEXPORT}")
        if not _is(version, int) or version < 1:
            raise BundleError(f"{where}: format {json.dumps(version)[:60]} is not a version number; {REEXPORT}")
        if version > FORMAT:
            raise BundleError(
                f"{where} is bundle format {version}, newer than this app reads ({FORMAT}): "
                "update the app (git pull, then make deploy)"
            )
        if version < OLDEST_FORMAT:
            raise BundleError(
                f"{where} is bundle format {version}, older than this app reads ({OLDEST_FORMAT}); {REEXPORT}"
            )
        try:
            return _build(cls, raw, "")
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: {e}; {REEXPORT}") from None


def _is(value: object, hint) -> bool:
    """Whether a JSON value fits a field's type hint (bool is not a number; numbers are finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (int, str):
        return isinstance(value, hint) and not isinstance(value, bool)
    if origin is tuple:
        items = args[:1] * len(value) if isinstance(value, list) and args[-1] is Ellipsis else args
        return isinstance(value, list) and len(value) == len(items) and all(map(_is, value, items))
    if origin is dict:
        return isinstance(value, dict) and all(_is(k, args[0]) and _is(v, args[1]) for k, v in value.items())
    raise TypeError(f"no JSON check for {hint}")


def _build(cls, raw: dict, prefix: str):
    """``cls`` from a JSON object, field by field: a missing or mistyped field is named in the error."""
    hints, values = typing.get_type_hints(cls), {}
    for spec in fields(cls):
        key, hint = spec.name, hints[spec.name]
        if key not in raw:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ValueError(f"{prefix}{key} is missing")
            continue
        value = raw[key]
        if _is_dataclass(hint):
            values[key] = _build_object(hint, value, f"{prefix}{key}")
        elif typing.get_origin(hint) is dict and _is_dataclass(typing.get_args(hint)[1]):
            if not isinstance(value, dict) or len(value) > MAX_METHODS:
                raise ValueError(f"{prefix}{key} is not an object of at most {MAX_METHODS} entries")
            item = typing.get_args(hint)[1]
            values[key] = {k: _build_object(item, v, f"{prefix}{key}.{str(k)[:40]}") for k, v in value.items()}
        elif not _is(value, hint):
            want = str(hint) if typing.get_origin(hint) else hint.__name__
            raise ValueError(f"{prefix}{key} is {json.dumps(value)[:60]}, want {want}")
        else:
            values[key] = tuple(value) if typing.get_origin(hint) is tuple else value
    return cls(**values)


def _is_dataclass(hint) -> bool:
    return isinstance(hint, type) and hasattr(hint, "__dataclass_fields__")


def _build_object(cls, value: object, where: str):
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    return _build(cls, value, f"{where}.")


def read_meta(path: str | Path) -> BundleMeta:
    """model.json of the bundle at ``path``, validated."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        if not Path(path).exists() and (found := leftovers(Path(path))):
            raise BundleError(
                f"{path} is missing, and an interrupted export left the previous bundle at "
                f"{found[0]}: rename it back, or export again (which does)"
            )
        raise BundleError(f"{path} is not a bundle: no {META} (build one with `make qat` or `make export`)")
    if (size := meta_path.stat().st_size) > META_MAX_BYTES:
        raise BundleError(f"{meta_path} is {size} bytes, more than a model.json's {META_MAX_BYTES}; {REEXPORT}")
    try:
        raw = json.loads(meta_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{meta_path} is not valid JSON ({str(e)[:200]}); {REEXPORT}") from None
    return BundleMeta.from_json(raw, meta_path)


def read_bundle(path: str | Path) -> tuple[BundleMeta, bytes]:
    """model.json and the program's bytes, checked against its hash and magic; no runtime needed."""
    path = Path(path)
    meta = read_meta(path)
    missing = [name for name in meta.files if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}: copy the whole bundle directory")
    data = (path / meta.pte).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.pte_sha256:
        raise BundleError(f"{path / meta.pte} does not match pte_sha256 in {META}: corrupt or mixed-up copy")
    if len(data) < PTE_MIN_BYTES or data[PTE_MAGIC_AT] != b"ET":
        raise BundleError(f"{path / meta.pte} is not an ExecuTorch program (too short or no ET identifier); {REEXPORT}")
    return meta, data


GOLDEN_MAX_BYTES = 64 * 2**20  # golden.npz, packed and each array unpacked: eight inputs and frames take < 1 MB
GOLDEN_MAX_IMAGES = 256
GOLDEN_MAX_SIDE = 4096


def read_golden(path: str | Path) -> dict:
    """The host's golden inputs and raw frames, with the logits its runtime gave for them.

    Every array's name, dtype and shape is read from its header and checked against model.json before any
    data is read, and sizes are bounded: a header claiming terabytes, or a deflate bomb, is one error.
    """
    meta = read_meta(path)
    golden = Path(path) / meta.golden
    try:
        if golden.stat().st_size > GOLDEN_MAX_BYTES:
            raise ValueError(f"{golden.stat().st_size} bytes, more than {GOLDEN_MAX_BYTES}")
        with zipfile.ZipFile(golden) as archive:
            headers = _npy_headers(archive)
            _check_golden(headers, meta)
            with np.load(golden, allow_pickle=False) as data:
                frames = [data[f"frame_{i}"] for i in range(_frame_count(headers))]
                return {
                    "inputs": data["inputs"],
                    "logits": data["logits"],
                    "frames": frames,
                    "frame_logits": data["frame_logits"],
                }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise BundleError(f"{golden} is unreadable ({str(e)[:200]}); {REEXPORT}") from None


def _npy_headers(archive: zipfile.ZipFile) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Each member's dtype and shape from its .npy header alone, its unpacked size bounded."""
    headers = {}
    for info in archive.infolist()[: 4 * GOLDEN_MAX_IMAGES]:
        if not info.filename.endswith(".npy") or info.file_size > GOLDEN_MAX_BYTES:
            raise ValueError(f"member {info.filename[:60]!r} is not a bounded .npy array")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{info.filename[:60]!r} is .npy version {version}")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(member, max_header_size=10_000)
        if dtype.hasobject or fortran:
            raise ValueError(f"{info.filename[:60]!r} holds objects or Fortran order")
        headers[info.filename[:-4]] = (dtype, tuple(shape))
    return headers


def _frame_count(headers: dict) -> int:
    return sum(name.startswith("frame_") and name[6:].isdigit() for name in headers)


def _check_golden(headers: dict, meta: BundleMeta) -> None:
    """The arrays export writes, with the dtypes and shapes model.json implies."""
    size, classes, frames = meta.input.size, meta.num_classes, _frame_count(headers)
    n = (headers.get("inputs", (None, (0,)))[1] or (0,))[0]
    want = {
        "inputs": (np.float32, (n, 3, size, size)),
        "logits": (np.float32, (n, classes)),
        "frame_logits": (np.float32, (frames, classes)),
    }
    if not 1 <= n <= GOLDEN_MAX_IMAGES:
        raise ValueError(f"want 1 to {GOLDEN_MAX_IMAGES} inputs, found {n}")
    for name, (dtype, shape) in want.items():
        if name not in headers:
            raise ValueError(f"no {name} array")
        if headers[name] != (np.dtype(dtype), shape):
            raise ValueError(
                f"{name} is {headers[name][0]} {list(headers[name][1])}, want {np.dtype(dtype)} {list(shape)}"
            )
    for i in range(frames):
        dtype, shape = headers[f"frame_{i}"]
        if (
            dtype != np.uint8
            or len(shape) != 3
            or shape[2] != 3
            or not all(1 <= d <= GOLDEN_MAX_SIDE for d in shape[:2])
        ):
            raise ValueError(
                f"frame_{i} is {dtype} {list(shape)}, want uint8 [height, width, 3] of at most {GOLDEN_MAX_SIDE}"
            )


@dataclass
class Bundle:
    path: Path
    meta: BundleMeta
    runner: Runner

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels

    @property
    def input(self) -> InputSpec:
        return self.meta.input

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one preprocessed (1, 3, H, W) float32 input; returns (1, classes) logits, all finite.

        A NaN would rank below every label and leave an empty top-k, which the app would count as a result.
        """
        logits = self.runner(batch)
        if not np.isfinite(logits).all():
            raise NativeError(f"{self.path / self.meta.pte} returned NaN or infinite logits; {REEXPORT}")
        return logits


def load_bundle(path: str | Path, threads: int | None = None) -> Bundle:
    """Check and load the app's method of a bundle; ``threads`` sizes XNNPACK's thread pool (None: one per
    performance core).

    The method's own input and output, shape and memory order, must be the ones model.json declares, so a
    mismatch is one error here rather than a wrong or failing result at the first frame.
    """
    path = Path(path)
    meta, data = read_bundle(path)
    try:
        vet(data, meta.method)
        runner = Runner(data, threads, meta.method)
    except NativeError as e:
        raise BundleError(f"cannot load {path / meta.pte}: {e}") from None
    try:
        check_declared(runner, meta, path / meta.pte)
    except BundleError:
        runner.close()
        raise
    return Bundle(path, meta, runner)


def declare_methods(pte: bytes, names: tuple[str, ...]) -> dict[str, MethodDecl]:
    """model.json's ``methods``, read from the program itself: each method's input and output as it takes them."""
    declared = {}
    for name in names:
        runner = Runner(pte, None, name)
        declared[name] = MethodDecl(
            TensorDecl.of(runner.input_shape, runner.input_order),
            TensorDecl.of(runner.output_shape, runner.output_order),
        )
        runner.close()
    return declared


def check_declared(runner: Runner, meta: BundleMeta, where: Path) -> None:
    """The loaded method is what model.json says: the declared input and output (shape and dim order) when
    it declares them, else the shapes its input size and class count imply."""
    size, classes = meta.input.size, meta.num_classes
    want = meta.methods.get(runner.method) or MethodDecl(
        TensorDecl.of((1, 3, size, size), runner.input_order), TensorDecl.of((1, classes), runner.output_order)
    )
    for what, shape, order, decl in (
        ("takes", runner.input_shape, runner.input_order, want.input),
        ("returns", runner.output_shape, runner.output_order, want.output),
    ):
        if (shape, order) != (decl.shape, decl.dim_order):
            raise BundleError(
                f"{where}: {runner.method} {what} shape {list(shape)} in dim order {list(order)}, {META} says "
                f"{list(decl.shape)} in {list(decl.dim_order)}; {REEXPORT}"
            )


def _any_format_meta(path: Path) -> dict | None:
    """model.json of a bundle of any format (an object naming its program's hash), else None."""
    try:
        raw = json.loads((path / META).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) and "pte_sha256" in raw else None


def check_replaceable(out: Path) -> None:
    """``out`` may be written: it does not exist, is an empty directory, or is a bundle and nothing else."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise BundleError(
            f"{out} exists and is not a bundle directory: nothing was written; give another output path or move it away"
        )
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    raw = _any_format_meta(out)
    if raw is None:
        raise BundleError(
            f"{out} exists and is not a bundle (no readable {META}): nothing was written; "
            "give another output path or move it away"
        )
    known = {META, *REPORTS, *OPTIONAL, "model.pte", "golden.npz", str(raw.get("pte")), str(raw.get("golden"))}
    if extra := sorted(entries - known):
        raise BundleError(
            f"{out} is a bundle but also holds {', '.join(extra[:5])}: nothing was written; "
            "move those files, or give another output path"
        )


_WRITING: dict[Path, int] = {}  # the bundles this process holds the writer's lock of: path -> the lock's fd


@contextmanager
def sole_writer(out: Path) -> Iterator[None]:
    """Hold ``out``'s writer's lock for the block, or fail at once with one line: a second export to the same
    place stops at its start, not after minutes of work. Re-entrant within a process (make qat's pipeline holds
    it, and the export it runs takes it again). The lock is a file under the cache folder named by ``out``'s
    absolute path, so nothing is left beside the bundles, and the kernel drops it when the process ends,
    however it ends."""
    key = Path(os.path.abspath(out))
    if key in _WRITING:
        yield
        return
    lock = cache_root() / "locks" / hashlib.sha256(os.fsencode(key)).hexdigest()
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BundleError(
            f"another export is writing {out} now: wait for it to finish, or give another output path"
        ) from None
    _WRITING[key] = fd
    try:
        yield
    finally:
        del _WRITING[key]
        os.close(fd)


def write_bundle(out: Path, meta: BundleMeta, contents: dict[str, bytes]) -> None:
    """Write the bundle into a temporary sibling of ``out``, then swap it in for the previous bundle there.

    ``contents`` holds every file but model.json, and any of the OPTIONAL ones. ``out`` must pass
    ``check_replaceable``: a directory that is not a bundle is never replaced. The previous bundle is
    set aside, not deleted, until the new one is in place: an interrupt between the two renames puts
    it back, and a write cut short harder than that (power, SIGKILL) leaves it beside ``out``, where
    the next write restores it first.
    """
    out = Path(out)
    if set(contents) - set(OPTIONAL) != set(meta.files[1:]):
        raise ValueError(f"bundle contents {sorted(contents)} are not the files {meta.files[1:]} (and pictures)")
    recover_previous(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    previous = staging.with_name(staging.name.replace(".staging-", PREVIOUS))
    try:
        staging.chmod(0o755)
        for name, data in {META: meta.to_json(), **contents}.items():
            (staging / name).write_bytes(data)
        if out.exists():
            out.rename(previous)
        staging.rename(out)
    finally:
        if previous.exists() and not out.exists():
            previous.rename(out)
        shutil.rmtree(staging, ignore_errors=True)
        for old in [previous, *leftovers(out)] if out.exists() else []:
            shutil.rmtree(old, ignore_errors=True)


def leftovers(out: Path) -> list[Path]:
    """Previous bundles of ``out`` that a write cut short left beside it, newest first."""
    if not out.parent.is_dir():
        return []
    found = out.parent.glob(f".{glob_escape(out.name)}{PREVIOUS}*")
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def recover_previous(out: Path) -> Path | None:
    """Put back the previous bundle of ``out`` when a cut-short write left ``out`` missing; its path, or None."""
    if out.exists() or out.is_symlink() or not (found := leftovers(out)):
        return None
    found[0].rename(out)
    return out
