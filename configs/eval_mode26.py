"""The 26 zero-shot tasks of MetaCLIP / MoDE (paper Tables 2-3), as CLIP_benchmark folders.

  python launch.py evaluate --config configs/eval_mode26.py:root=/data/clip_benchmark \
      --workdir workdirs/demo                     # the run's dense model and experts
  python launch.py report --config configs/eval_mode26.py:root=/data/clip_benchmark \
      --workdir workdirs/demo
  python launch.py evaluate --config configs/eval_mode26.py:root=/data/cb,models=openai_b32=/ckpt/ViT-B-32.pt \
      --workdir /tmp/openai_b32                   # any public CLIP from a local file
  # or on any run config: --config configs/mode_b16.py:n=4 --config.evaluate.suite=mode26 \
  #                       --config.evaluate.root=/data/clip_benchmark

`run` (default demo) names the training config the workdir's models were
trained with and `run_arg` its arguments; inside the argument, lists are
';'-separated (run=mode_b16,run_arg=n=8;m=1024, models=a=/x;b=/y, tasks=pets;dtd). Each task is looked for under `root` by the folder names in
`folders` (CLIP_benchmark's `wds_<name>` first); a task not found is listed
as skipped in the report, never fatal.

Metrics as MetaCLIP's clipeval/slip/eval_zeroshot.py (after CLIP, paper
Table 9): mean per-class accuracy for Aircraft, Pets, Caltech101 and Flowers;
(top-1 + top-5) / 2 for Kinetics700; ROC-AUC for HatefulMemes; top-1 for the
rest. Video tasks (UCF101, Kinetics700) are evaluated on the frames their
folders hold (CLIP used the middle frame).

Class names and templates (mode_jax/eval/tasks.py): the folder's own files
first (they define the label order), then the clip-benchmark package
(`cb` key), then OpenAI CLIP's data/prompts.md (`openai` key, MIT,
configs/eval_data/openai_prompts.json). Where MetaCLIP's lists
(clipeval/slip/labels.json, templates.json) differ from clip-benchmark's,
checked entry by entry:
  * Pets: the same 37 names in another order (MetaCLIP sorts its image
    folders: the capitalised cat breeds first); label order must follow
    the data, which the folder's classnames.txt fixes.
  * CLEVR counts: MetaCLIP's classes are the digits "10", "3", ... "9" in
    string order with its own template; clip-benchmark's are "three" ..
    "ten" with "a picture of {c} objects".
  * Templates: PCAM (MetaCLIP 1, clip-benchmark 2) and RESISC45 (18 vs 4)
    differ; the other 19 shared tasks have identical templates, and the 10
    shared class lists other than Pets and CLEVR are identical.
  * CUB-200 is in neither clip-benchmark nor prompts.md: its folder must
    carry classnames.txt; the template is SLIP's, as MetaCLIP uses it.
"""

from configs import common

def _task(name, folders, metric="top1", **kw):
  return dict(name=name, folders=tuple(folders), metric=metric, kind="zeroshot", **kw)


TASKS = (
    _task("imagenet1k", ["wds_imagenet1k", "imagenet1k"], cb="imagenet1k"),
    _task("food101", ["wds_food101", "food101"], cb="food101", openai="Food101"),
    _task("cifar10", ["wds_cifar10", "wds_vtab-cifar10", "cifar10"], cb="cifar10",
          openai="CIFAR10"),
    _task("cifar100", ["wds_cifar100", "wds_vtab-cifar100", "cifar100"], cb="cifar100",
          openai="CIFAR100"),
    _task("cub200", ["wds_cub200", "cub200", "cub"],
          templates=["a photo of a {}, a type of bird."]),   # SLIP templates.json, as MetaCLIP
    _task("sun397", ["wds_sun397", "sun397"], cb="sun397", openai="SUN397"),
    _task("cars", ["wds_cars", "cars"], cb="cars", openai="StanfordCars"),
    _task("fgvc_aircraft", ["wds_fgvc_aircraft", "fgvc_aircraft"], "mean_per_class",
          cb="fgvc_aircraft", openai="FGVCAircraft"),
    _task("dtd", ["wds_dtd", "wds_vtab-dtd", "dtd"], cb="dtd", openai="DescribableTextures"),
    _task("pets", ["wds_vtab-pets", "wds_pets", "pets"], "mean_per_class", cb="pets",
          openai="OxfordPets"),
    _task("caltech101", ["wds_vtab-caltech101", "wds_caltech101", "caltech101"],
          "mean_per_class", cb="caltech101", openai="Caltech101",
          cb_by_folder={"wds_vtab-caltech101": "caltech101_vtab"}),   # VTAB label order
    _task("flowers", ["wds_vtab-flowers", "wds_flowers", "flowers"], "mean_per_class",
          cb="flowers", openai="Flowers102"),
    _task("mnist", ["wds_mnist", "mnist"], cb="mnist", openai="MNIST"),
    _task("fer2013", ["wds_fer2013", "fer2013"], cb="fer2013",
          openai="FacialEmotionRecognition2013"),
    _task("stl10", ["wds_stl10", "stl10"], cb="stl10", openai="STL10"),
    _task("eurosat", ["wds_vtab-eurosat", "wds_eurosat", "eurosat"], cb="eurosat",
          openai="EuroSAT"),
    _task("resisc45", ["wds_vtab-resisc45", "wds_resisc45", "resisc45"], cb="resisc45",
          openai="RESISC45"),
    _task("gtsrb", ["wds_gtsrb", "gtsrb"], cb="gtsrb", openai="GTSRB"),
    _task("kitti_distance", ["wds_vtab-kitti_closest_vehicle_distance", "kitti_distance"],
          cb="kitti_closest_vehicle_distance", openai="KITTI"),
    _task("country211", ["wds_country211", "country211"], cb="country211",
          openai="Country211"),
    _task("pcam", ["wds_vtab-pcam", "wds_pcam", "pcam"], cb="pcam", openai="PatchCamelyon"),
    _task("ucf101", ["wds_ucf101", "ucf101"], openai="UCF101"),
    _task("kinetics700", ["wds_kinetics700", "kinetics700"], "top1_top5",
          openai="Kinetics700"),
    _task("clevr_counts", ["wds_vtab-clevr_count_all", "clevr_counts"],
          cb="clevr_count_all", openai="CLEVRCounts"),
    _task("hateful_memes", ["wds_hateful_memes", "hateful_memes"], "roc_auc",
          openai="HatefulMemes"),
    _task("sst2", ["wds_renderedsst2", "renderedsst2", "sst2"], cb="renderedsst2",
          openai="SST2"),
)


def suite_config(suite: str, arg):
  """The `arg.run` training config with evaluate pointed at `suite` under arg.root."""
  import importlib
  run_arg = arg.run_arg.replace(";", ",") or None   # run_arg=n=8;m=128 (',' splits arg)
  c = importlib.import_module(f"configs.{arg.run}").get_config(run_arg)
  c.evaluate.update(suite=suite, root=arg.root, models=arg.models.replace(";", ","),
                    tasks=arg.tasks.replace(";", ","))
  return c


def get_config(arg=None):
  arg = common.parse_arg(arg, root="", models="", tasks="", run="demo", run_arg="")
  return suite_config("mode26", arg)
