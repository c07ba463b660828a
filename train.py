"""Train DAN, EfficientNet-B3 or a plain ResNet-18 on one or more ImageFolder datasets.

    python3 train.py                                   # every dataset under Data/, DAN, RAF-DB recipe
    python3 train.py --data Data/rafdb --epochs 40     # one dataset
    torchrun --nproc_per_node 4 train.py --data ...    # several GPUs (PyTorch DDP)
"""
import argparse
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from common.errors import ArgumentParser, UserError, number, run_cli
from common.meta import ModelMeta
from data.datasets import FaceFolder, find_datasets
from data.loading import Batches, ShardedSampler, TensorCache, balanced_weights, source_repeats
from data.transforms import PRESETS, AugmentConfig, Normalize, TrainAugment
from networks import (MODELS, TRUNKS, build_criterion, build_model, default_input, default_pretrained, min_input_size,
                      model_meta, model_spec)
from networks.dan import group_heads
from utils.checkpoint import load_backbone, load_checkpoint, load_state_strict, training_checkpoint
from utils.distributed import cleanup, init_distributed
from utils.engine import (BatchMix, Optimisation, Precision, Runtime, TrainInputs, TrainStep, evaluate,
                          nonfinite_tensor, train_one_epoch)
from utils.finetune import init_from
from utils.metrics import confusion_matrix, summarize
from utils.misc import cpu_count, default_workers, resolve_device, seed_everything, setup_backend, setup_logging
from utils.run_folder import RunFolder, release_locks

ROOT = Path(__file__).resolve().parent
DEFAULT_EPOCHS = 40
# What a resumed run may change: where and how it runs (and --epochs, --output), never what it learns.
RUNTIME_ARGS = ("device", "workers", "threads", "amp", "amp_dtype", "compile", "cache", "cache_gb", "grouped_heads")
log = logging.getLogger("train")


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train a facial-expression model.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dan", choices=sorted(MODELS))
    p.add_argument("--data", nargs="+", default=None,
                   help="dataset folders with train/ and val/ (default: every dataset under Data/)")
    p.add_argument("--epochs", type=number(int, 1), default=None,
                   help=f"default {DEFAULT_EPOCHS}; with --resume, the run's own")
    p.add_argument("--batch-size", type=number(int, 1), default=256, help="per process")
    p.add_argument("--img-size", type=number(int, 32), default=None,
                   help="input side; default the trunk's own: 224 (ResNet-18, EfficientNet-B3), 150 (face_resnet)")
    p.add_argument("--trunk", default=None, choices=sorted(TRUNKS),
                   help="DAN's trunk (default resnet18); face_resnet is dlib's face-recognition network, "
                        "pretrained with the file python3 -m tools.convert --format faceapi-recognition writes")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=None,
                   help="default 0.1 for sgd, 1e-4 for adam")
    p.add_argument("--momentum", type=number(float, 0, 1, high_open=True), default=0.9)
    p.add_argument("--weight-decay", type=number(float, 0), default=None, help="default 1e-4 for sgd, 0 for adam")
    p.add_argument("--sched", default="auto", choices=["auto", "step", "exp", "cosine"],
                   help="auto: step (x0.1 every 10 epochs) for sgd, exp (x0.6 per epoch) for adam")
    p.add_argument("--step-size", type=number(int, 1), default=10, help="epochs between steps of --sched step")
    p.add_argument("--gamma", type=number(float, 0, 1, low_open=True), default=None,
                   help="decay factor; default 0.1 for step, 0.6 for exp")
    p.add_argument("--warmup-epochs", type=number(float, 0), default=1.0, help="linear learning-rate warm-up")
    p.add_argument("--aug", default="rafdb", choices=sorted(PRESETS), help="training augmentation preset")
    p.add_argument("--label-smoothing", type=number(float, 0, 1, high_open=True), default=0.0)
    p.add_argument("--num-heads", type=number(int, 1), default=4, help="DAN's cross-attention heads")
    p.add_argument("--lambda-aff", type=number(float, 0), default=1.0, help="weight of DAN's affinity loss")
    p.add_argument("--lambda-part", type=number(float, 0), default=1.0, help="weight of DAN's partition loss")
    p.add_argument("--balanced-sampler", action="store_true", help="sample classes with equal probability")
    p.add_argument("--scale-jitter", nargs=2, type=number(float, 0.1, 4.0), default=None, metavar=("LOW", "HIGH"),
                   help="zoom range of the random affine, replacing the preset's (e.g. 0.7 1.2)")
    p.add_argument("--color-jitter", type=number(float, 0, 1), default=0.0,
                   help="probability of brightness, contrast and gamma jitter")
    p.add_argument("--blur", type=number(float, 0, 1), default=0.0, help="probability of a Gaussian blur")
    p.add_argument("--jpeg", type=number(float, 0, 1), default=0.0,
                   help="probability of re-encoding a training image as JPEG of quality 20-80")
    p.add_argument("--mixup", type=number(float, 0), default=0.0,
                   help="mixup with Beta(a, a) weights (0: off); needs no votes")
    p.add_argument("--cutmix", type=number(float, 0), default=0.0, help="CutMix with Beta(a, a) weights (0: off)")
    p.add_argument("--logit-adjust", type=number(float, 0), default=0.0,
                   help="logit-adjusted loss: add tau * log(class prior) to the logits inside the loss (0: off)")
    p.add_argument("--train-fraction", type=number(float, 0, 1, low_open=True), default=1.0,
                   help="train on a fixed random share of the training images (quick trials)")
    p.add_argument("--source-fraction", nargs="+", default=[], metavar="SOURCE=F",
                   help="train on a fixed share F of a source's images (quick trials on a merge)")
    p.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None,
                   help="train on grey faces (colour photos turned grey, as prediction then does); --no-grayscale "
                        "trains on colour; default: grey when every image is grey")
    p.add_argument("--colour-aug", type=number(float, 0, 1), default=0.0, metavar="P",
                   help="probability of a hue, saturation and white-balance shift (colour training)")
    p.add_argument("--grey-prob", type=number(float, 0, 1), default=0.0, metavar="P",
                   help="probability that a training image is turned grey (colour training)")
    p.add_argument("--oversample", nargs="+", default=[], metavar="SOURCE=K",
                   help="show each image of a source K times per epoch (e.g. ckplus48=8 next to FER+)")
    p.add_argument("--soft-labels", default="auto",
                   help="train the cross-entropy on annotators' vote distributions: 'auto' uses each dataset's "
                        "votes.csv (FER+), a path names a votes CSV, 'none' trains on the folder labels")
    p.add_argument("--min-votes", type=int, default=2,
                   help="with soft labels: a class with fewer votes gets none (FER+'s outlier rule)")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start a new run from this model's weights (.pth or .safetensors of this project); "
                        "rows of classes both know are carried over by name, new classes start fresh")
    p.add_argument("--keep-epochs", action="store_true",
                   help="also keep every epoch's weights (epochs/epoch_NNN.safetensors, fp16) for tools.average")
    p.add_argument("--select", default="accuracy", choices=["accuracy", "source-mean"],
                   help="val metric that picks best.pth: overall accuracy, or the mean of the per-source "
                        "accuracies (so a small source counts as much as a large one)")
    p.add_argument("--pretrained", default="auto",
                   help="backbone weights file; 'auto' uses Data/resnet18_msceleb.pth (DAN) or "
                        "Data/efficientnet_b3.pth if present; 'none' for random initialisation")
    p.add_argument("--output", default=None, help="run folder (default runs/<model>-<time>)")
    p.add_argument("--resume", default=None, help="a last.pth checkpoint or a run folder to continue")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    p.add_argument("--workers", type=number(int, -1), default=-1,
                   help="DataLoader workers (-1: chosen for the device)")
    p.add_argument("--threads", type=number(int, 0), default=0, help="torch CPU threads (0: one per core)")
    p.add_argument("--cache", default="auto", choices=["auto", "yes", "no"],
                   help="decode the dataset once into memory (auto: when it takes under --cache-gb)")
    p.add_argument("--cache-gb", type=number(float, 0), default=6.0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    p.add_argument("--amp-dtype", default="auto", choices=["auto", "bf16", "fp16"],
                   help="autocast type on CUDA (auto: bf16 where the GPU has it, else fp16 with a GradScaler)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on; faster for every model here: docs/speed.md)")
    p.add_argument("--grouped-heads", action=argparse.BooleanOptionalAction, default=None,
                   help="run DAN's heads together as grouped convolutions (same weights and checkpoints; "
                        "default: on for CUDA, where it is faster, off on the CPU, where it is not)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    sgd = args.optimizer == "sgd"
    args.lr = args.lr if args.lr is not None else (0.1 if sgd else 1e-4)
    args.weight_decay = args.weight_decay if args.weight_decay is not None else (1e-4 if sgd else 0.0)
    if args.sched == "auto":
        args.sched = "step" if sgd else "exp"
    if args.gamma is None:
        args.gamma = 0.6 if args.sched == "exp" else 0.1
    if args.data is None:
        found = find_datasets(ROOT / "Data")
        if not found:
            raise UserError("no dataset under Data/: put one in Data/<name>/{train,val}/<class>/ "
                            "(python3 -m data.prepare converts the official releases) or pass --data")
        args.data = [str(p) for p in found]
    for folder in args.data:
        if not Path(folder).is_dir():
            raise UserError(f"--data {folder}: no such folder")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.grayscale and (args.colour_aug or args.grey_prob):
        raise UserError("--colour-aug and --grey-prob are for colour training; drop them or --grayscale")
    if args.trunk is not None and "trunk" not in model_spec(args.model).options:
        raise UserError(f"--trunk applies to --model dan; {args.model} has its own trunk "
                        "(--model face_resnet is the plain classifier on the face_resnet trunk)")
    if args.img_size is None:
        args.img_size = default_input(args.model, args.trunk).img_size
    if args.img_size < min_input_size(args.model, args.trunk):
        raise UserError(f"--img-size {args.img_size} is too small for the {args.trunk or args.model} trunk: "
                        f"it takes at least {min_input_size(args.model, args.trunk)} pixels")
    if args.pretrained == "auto":
        args.pretrained = default_pretrained(args.model, ROOT, args.trunk)
    elif args.pretrained == "none":
        args.pretrained = None
    if args.output is None:
        args.output = str(ROOT / "runs" / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    return args


def lr_factor(it: int, iters_per_epoch: int, args) -> float:
    """Learning-rate multiplier at iteration `it`: linear warm-up, then the schedule by epoch."""
    epoch = it / iters_per_epoch
    warm = min(1.0, (it + 1) / (args.warmup_epochs * iters_per_epoch)) if args.warmup_epochs > 0 else 1.0
    if args.sched == "step":
        decay = args.gamma ** (int(epoch) // args.step_size)
    elif args.sched == "exp":
        decay = args.gamma ** int(epoch)
    else:
        decay = 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / args.epochs)))
    return warm * decay


def make_optimizer(step: TrainStep, args):
    params = [p for p in step.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)


def build_data(args, device, dist_info):
    roots = [Path(d) for d in args.data]
    grey = bool(args.grayscale)  # None (detect) reads the images as they are
    train_set = FaceFolder(roots, "train", args.img_size, grayscale=grey)
    if args.source_fraction:
        keep_source_fraction(train_set, parse_factors(args.source_fraction, "--source-fraction", float), args.seed)
    if args.train_fraction < 1:  # a fixed share, the same for every epoch and every resume
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
        keep = keep[:max(1, int(args.train_fraction * len(train_set)))].sort().values
        train_set.samples = [train_set.samples[i] for i in keep.tolist()]
    val_set = FaceFolder(roots, "val", args.img_size, classes=train_set.classes, grayscale=grey)
    if val_set.missing_classes():
        log.warning("the val split has no images of %s: validation accuracy leaves them out",
                    val_set.missing_classes())
    nbytes = TensorCache.nbytes(train_set) + TensorCache.nbytes(val_set)
    cached = args.cache == "yes" or (args.cache == "auto" and nbytes <= args.cache_gb * 2**30)
    workers = args.workers if args.workers >= 0 else default_workers(device, cached)
    caches = (None, None)
    if cached:
        fill_workers = args.workers if args.workers >= 0 else cpu_count()
        caches = tuple(TensorCache(ds, device, fill_workers, desc=f"caching {ds.split}")
                       for ds in (train_set, val_set))
    weights = balanced_weights(train_set.labels, len(train_set.classes)) if args.balanced_sampler else None
    repeats = (source_repeats(train_set.source_ids, train_set.sources, parse_oversample(args.oversample))
               if args.oversample else None)
    train_sampler = ShardedSampler(len(train_set), True, args.seed, dist_info.rank, dist_info.world_size, weights,
                                   repeats)
    batch = min(args.batch_size, len(train_sampler))
    val_sampler = ShardedSampler(len(val_set), False, rank=dist_info.rank, world_size=dist_info.world_size)
    pin = device.type == "cuda"
    train_batches = Batches(train_set, train_sampler, batch, caches[0], workers, drop_last=True, pin_memory=pin)
    val_batches = Batches(val_set, val_sampler, batch, caches[1], workers, pin_memory=pin)
    log.info("data: %s | classes %s | train %d, val %d images | %s, %d workers",
             ", ".join(args.data), train_set.classes, len(train_set), len(val_set),
             "cached in memory" if cached else "streamed", workers)
    log.info("train images per class: %s", dict(zip(train_set.classes, train_set.class_counts().tolist())))
    if repeats is not None:
        log.info("oversampled: %d images per epoch from %d", int(repeats.sum()), len(train_set))
    soft = None
    if args.soft_labels != "none":
        extra = None if args.soft_labels == "auto" else args.soft_labels
        targets = train_set.soft_targets(extra, args.min_votes)
        if targets is not None:
            soft = torch.from_numpy(targets).to(device)
    return train_set, val_set, train_batches, val_batches, soft


def augment_config(args) -> AugmentConfig:
    """The --aug preset with the options that add to it."""
    config = replace(PRESETS[args.aug], p_color=args.color_jitter, p_blur=args.blur, p_jpeg=args.jpeg,
                     p_colour_shift=args.colour_aug, p_grey=args.grey_prob)
    if args.scale_jitter:
        config = replace(config, scale=tuple(args.scale_jitter), p_affine=max(config.p_affine, 0.5))
    return config


def parse_oversample(items) -> dict:
    """{source: K} from ["ckplus48=8", ...]."""
    return parse_factors(items, "--oversample", int)


def parse_factors(items, option: str, kind=int) -> dict:
    """{source: value} from ["ckplus48=8", ...]: whole numbers >= 1 (kind int) or fractions in (0, 1] (float)."""
    factors = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            parsed = kind(value)
        except ValueError:
            parsed = None
        good = parsed is not None and (parsed >= 1 if kind is int else 0 < parsed <= 1)
        if not name or not good:
            what = "a whole number >= 1" if kind is int else "a fraction in (0, 1]"
            raise UserError(f"{option} {item!r}: expected SOURCE=K with K {what}")
        factors[name] = parsed
    return factors


def keep_source_fraction(dataset: FaceFolder, fractions: dict, seed: int) -> None:
    """Keep a fixed share (the same every epoch and every resume) of the named sources' images."""
    unknown = sorted(set(fractions) - set(dataset.sources))
    if unknown:
        raise UserError(f"--source-fraction names {unknown}, which are not sources of the training data "
                        f"({', '.join(dataset.sources)})")
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(dataset), generator=g) < torch.tensor(
        [fractions.get(name, 1.0) for name in dataset.sources])[torch.as_tensor(dataset.source_ids)]
    dataset.samples = [s for s, k in zip(dataset.samples, keep.tolist()) if k]


def is_grayscale(dataset: FaceFolder, probe: int = 64) -> bool:
    """Whether the training images are grey (checked on an evenly spread sample): recorded in the
    checkpoint so that inference feeds colour photos to a grey-trained model in grey."""
    step = max(1, len(dataset) // probe)
    for i in range(0, len(dataset), step):
        try:
            image = dataset.load(i)
        except (UserError, OSError):
            continue
        if not (torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])):
            return False
    return True


def check_finite(step: TrainStep, record: dict, epoch: int, out: Path) -> None:
    """Stop before saving an epoch whose weights (or DAN's centers, or BatchNorm's statistics) or
    validation loss are not finite: last.pth keeps the last good epoch."""
    bad = nonfinite_tensor(step.state_dict())
    if bad is None and math.isfinite(record["val_loss"]):
        return
    what = f"{bad} holds NaN or infinite values" if bad else f"the validation loss is {record['val_loss']}"
    kept = f"{out / 'last.pth'} keeps epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
    raise UserError(f"training diverged in epoch {epoch} ({what}); {kept}; lower --lr or raise --warmup-epochs")


def main(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    dist_info = init_distributed(device.type)
    setup_logging(dist_info.rank)
    try:
        return _train(args, device, dist_info)
    finally:
        release_locks()
        cleanup(dist_info)


def resume_args(args: argparse.Namespace, resume: dict) -> argparse.Namespace:
    """The arguments of a resumed run: the saved run's data, model and recipe (options added since
    it began take their defaults); this call's way of running; --epochs if given, else the saved
    run's; and the run folder this call names with --output, else the resumed checkpoint's folder:
    never the saved run's --output, so that a copied run does not write into its original."""
    if not isinstance(resume["args"], dict):
        raise UserError(f"{args.resume}: its saved arguments are not a dict; the file is damaged")
    check_saved_args(resume["args"], args.resume)
    saved = {**vars(get_args_parser().parse_args([])), **resume["args"]}
    for key in RUNTIME_ARGS + ("resume",):
        saved[key] = getattr(args, key)
    saved["epochs"] = max(args.epochs or saved["epochs"], resume["epoch"])
    saved["output"] = args.output or str(Path(args.resume).parent)
    return resolve_args(argparse.Namespace(**saved))  # the checks between options, as on a command line


def check_saved_args(saved: dict, source) -> None:
    """Run the arguments a checkpoint saved through the command line's own checks (each option's
    type and range, its choices): an edited or damaged file must not train with lr "abc", batch size 0."""
    for action in get_args_parser()._actions:
        value = saved.get(action.dest)
        if action.dest == "help" or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            try:
                if action.type is not None:
                    action.type(str(item))
                if action.choices is not None and item not in action.choices:
                    raise ValueError(f"not one of {', '.join(map(str, action.choices))}")
            except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
                raise UserError(f"{source}: the saved argument {action.option_strings[0]} {item!r} is invalid "
                                f"({err}); the checkpoint was edited or damaged") from None


def load_resume(args: argparse.Namespace) -> Tuple[argparse.Namespace, Optional[dict]]:
    """(the run's resolved arguments, the checkpoint --resume names or None)."""
    if not args.resume:
        return resolve_args(args), None
    path = Path(args.resume)
    args.resume = str(path / "last.pth" if path.is_dir() else path)
    resume = load_checkpoint(args.resume)
    if not all(k in resume for k in ("args", "optimizer", "epoch")):
        raise UserError(f"{args.resume} holds weights only (no optimiser state or arguments), so it cannot be "
                        "resumed; evaluate it with test.py or start a new run")
    return resume_args(args, resume), resume


def open_run(args: argparse.Namespace, resume: Optional[dict], dist_info) -> RunFolder:
    """The run folder, checked (never another run's) and, on the main process, started."""
    run = RunFolder(Path(args.output))
    if dist_info.is_main:
        run.lock()  # before the check: two runs started together must not both pass it
    run.check(args.resume)
    if dist_info.is_main:
        run.start(vars(args), resume, args.resume)
        log.info("run folder: %s", run.path)
    return run


def model_arguments(args: argparse.Namespace, classes) -> dict:
    model_args = {"num_classes": len(classes)}
    options = model_spec(args.model).options
    if "num_heads" in options:
        model_args["num_heads"] = args.num_heads
    if "trunk" in options and args.trunk not in (None, options["trunk"]):
        model_args["trunk"] = args.trunk  # absent for the default trunk, as in files written before trunks
    return model_args


@dataclass
class Training:
    """What trains: the model (saved as it is), its criterion, both as one step, the module the
    loop calls (the step, compiled and/or wrapped in DDP), the optimisation and the metadata."""

    model: nn.Module
    criterion: nn.Module
    step: TrainStep
    runner: nn.Module
    opt: Optimisation
    meta: ModelMeta

    def checkpoint(self, **state) -> dict:
        o = self.opt
        return training_checkpoint(self.meta, self.model.state_dict(), criterion=self.criterion.state_dict(),
                                   optimizer=o.optimizer.state_dict(), scheduler=o.scheduler.state_dict(),
                                   scaler=o.scaler.state_dict(), **state)


def build_training(args: argparse.Namespace, train_set: FaceFolder, iters: int, rt: Runtime,
                   resume: Optional[dict]) -> Training:
    """Model (random, --pretrained trunk or --init weights), criterion, optimiser and schedule."""
    model_args = model_arguments(args, train_set.classes)
    fresh = resume is None and not args.init  # --init and --resume bring all the weights
    if args.pretrained and fresh:
        log.info("backbone weights: %s", args.pretrained)
    elif fresh:
        log.info("no pretrained backbone found (see --pretrained): training from random initialisation")
    model = build_model(args.model, **model_args)
    if args.pretrained and fresh:
        load_backbone(model, args.pretrained)
    grouped = args.grouped_heads
    if model_spec(args.model).heads and (grouped if grouped is not None else rt.device.type == "cuda"):
        model = group_heads(model)  # a DAN subclass with the same state dict: checkpoints stay plain DAN
    criterion = build_criterion(args.model, model, args.label_smoothing, args.lambda_aff, args.lambda_part)
    grayscale = args.grayscale if args.grayscale is not None else is_grayscale(train_set)
    if args.init and resume is None:
        report = init_from(model, criterion, args.init, args.model, train_set.classes, colour=not grayscale)
        log.info("initialised from %s: %s", args.init, report.summary())
    step = TrainStep(model, criterion).to(rt.device)
    if rt.channels_last:
        step = step.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(step, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters, args))
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision.needs_scaler)
    meta = model_meta(args.model, model_args, train_set.classes, args.img_size, grayscale=grayscale)
    return Training(model, criterion, step, step, Optimisation(optimizer, scheduler, scaler), meta)


def restore(t: Training, resume: Optional[dict], classes, source) -> Tuple[int, float, int, list]:
    """(first epoch, best score, its epoch, history): a fresh run's, or the resumed run's with its
    weights, centres, optimiser, schedule and scaler put back."""
    if resume is None:
        return 1, -1.0, 0, []
    if resume["meta"].classes != classes:
        raise UserError(f"the data's classes {classes} differ from the checkpoint's {resume['meta'].classes}")
    load_state_strict(t.model, resume["state_dict"], source)
    t.criterion.load_state_dict(resume["criterion"])
    t.opt.optimizer.load_state_dict(resume["optimizer"])
    t.opt.scheduler.load_state_dict(resume["scheduler"])
    if t.opt.scaler.is_enabled() and resume.get("scaler"):  # empty when the run was saved without fp16
        t.opt.scaler.load_state_dict(resume["scaler"])
    log.info("resumed from epoch %d (best val accuracy %.2f%% at epoch %d)", resume["epoch"],
             100 * resume["best_metric"], resume["best_epoch"])
    return resume["epoch"] + 1, resume["best_metric"], resume["best_epoch"], resume["history"]


def wrap(t: Training, args: argparse.Namespace, rt: Runtime) -> None:
    """--compile, and DDP under torchrun."""
    if args.compile:
        t.step.model = torch.compile(t.model)
    if rt.dist.enabled:
        t.runner = DistributedDataParallel(t.step, device_ids=[rt.device.index or 0] if rt.device.type == "cuda"
                                           else None)


def train_inputs(args: argparse.Namespace, t: Training, train_set: FaceFolder, soft_targets, device) -> TrainInputs:
    """Augmentation, label distributions, mixup or CutMix, and --logit-adjust's bias on the criterion."""
    augment = TrainAugment(augment_config(args), Normalize(t.meta.mean, t.meta.std))
    mix = BatchMix(args.cutmix, cutmix=True) if args.cutmix else BatchMix(args.mixup) if args.mixup else None
    if mix is not None and soft_targets is None:  # mixing blends targets: one-hot where there are no votes
        soft_targets = F.one_hot(torch.as_tensor(train_set.labels), len(train_set.classes)).float().to(device)
    if args.logit_adjust:
        prior = torch.as_tensor(train_set.class_counts(), dtype=torch.float32).clamp(min=1)
        t.criterion.logit_bias = (args.logit_adjust * (prior / prior.sum()).log()).to(device)
    return TrainInputs(augment, soft_targets, mix)


def validate(model: nn.Module, batches, val_set: FaceFolder, normalize, rt: Runtime, select: str) -> Tuple[dict, float]:
    """(the epoch's val metrics for log.jsonl, the score --select keeps the best of)."""
    result = evaluate(model, batches, normalize, rt, desc="val")
    c = len(val_set.classes)
    val = summarize(confusion_matrix(result["labels"], result["preds"], c))
    by_source = {name: summarize(confusion_matrix(result["labels"][result["sources"] == i],
                                                  result["preds"][result["sources"] == i], c))
                 for i, name in enumerate(val_set.sources)}
    record = {"val_loss": float(result["loss"].mean()), "val_acc": val["accuracy"],
              "val_balanced_acc": val["balanced_accuracy"], "val_macro_f1": val["macro_f1"],
              "val_acc_per_source": {name: m["accuracy"] for name, m in by_source.items()}}
    score = val["accuracy"] if select == "accuracy" else sum(m["accuracy"] for m in by_source.values()) / len(by_source)
    return record, score


def _train(args, device, dist_info) -> dict:
    args, resume = load_resume(args)
    setup_backend(device, args.threads or max(1, cpu_count() // dist_info.world_size), args.deterministic)
    seed_everything(args.seed)
    run = open_run(args, resume, dist_info)
    train_set, val_set, train_batches, val_batches, soft_targets = build_data(args, device, dist_info)
    if len(train_batches) == 0:
        raise UserError("the training split is smaller than one batch; lower --batch-size")
    rt = Runtime(device, Precision.choose(device, args.amp, args.amp_dtype), args.channels_last is not False,
                 dist_info)
    t = build_training(args, train_set, len(train_batches), rt, resume)
    start_epoch, best, best_epoch, history = restore(t, resume, train_set.classes, args.resume)
    wrap(t, args, rt)
    inputs = train_inputs(args, t, train_set, soft_targets, device)
    normalize = Normalize(t.meta.mean, t.meta.std)
    log.info("%s: %.2fM parameters | %s | %s | batch %d x %d process(es) | %d iterations per epoch",
             args.model, sum(p.numel() for p in t.model.parameters()) / 1e6, device,
             f"autocast {rt.precision.dtype}" if rt.precision.enabled else "fp32",
             train_batches.batch_size, dist_info.world_size, len(train_batches))

    for epoch in range(start_epoch, args.epochs + 1):
        seed_everything(args.seed + epoch)  # augmentation depends on (seed, epoch) only: resumes exactly
        train_batches.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        stats = train_one_epoch(t.runner, train_batches, t.opt, inputs, rt, f"epoch {epoch}/{args.epochs}")
        val, score = validate(t.model, val_batches, val_set, normalize, rt, args.select)
        record = {"epoch": epoch, **stats, **val, "lr": t.opt.optimizer.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t0}
        check_finite(t.step, record, epoch, run.path)
        history.append(record)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
        if dist_info.is_main:
            run.save_epoch(t.checkpoint(epoch=epoch, best_metric=best, best_epoch=best_epoch, history=history,
                                        args=vars(args), metrics=record), improved, args.keep_epochs)
            log.info("epoch %d/%d: train loss %.4f acc %.2f%% | val loss %.4f acc %.2f%% balanced %.2f%% | "
                     "%.0f img/s, %.0fs | best %.2f%% (epoch %d)", epoch, args.epochs, stats["train_loss"],
                     100 * stats["train_acc"], val["val_loss"], 100 * val["val_acc"], 100 * val["val_balanced_acc"],
                     stats["train_images_per_s"], record["seconds"], 100 * best, best_epoch)
    if dist_info.is_main:
        log.info("done: best val accuracy %.2f%% at epoch %d; evaluate with: python3 test.py --checkpoint %s "
                 "--data %s", 100 * best, best_epoch, run.path / "best.pth", " ".join(args.data))
    return {"best_metric": best, "best_epoch": best_epoch, "output": str(run.path), "history": history}


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
