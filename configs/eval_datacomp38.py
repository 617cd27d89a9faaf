"""DataComp's 38-task evaluation (github.com/mlfoundations/datacomp tasklist.yml).

  python launch.py evaluate --config configs/eval_datacomp38.py:root=/data/datacomp_eval \
      --workdir workdirs/demo

Folders are looked for as DataComp downloads them from the clip-benchmark
hub: `wds_<task with '/' -> '-'>` (e.g. wds_vtab-cifar100), then the bare
name. Metrics as tasklist.yml's main_metric: mean per-class recall for
Caltech-101, FGVC Aircraft, Flowers and Pets; mean R@1 for Flickr30k and
MSCOCO; top-1 for the other classification tasks. Five tasks need metrics
or metadata this evaluator does not implement (WinoGAViL's Jaccard score,
iWildCam's macro F1, FMoW's worst-region accuracy, Dollar Street's and
GeoDE's worst-group accuracies): they are listed as skipped with that
reason, so the average here is over at most 33 tasks, not DataComp's 38.
"""

from configs import common
from configs import eval_mode26

_MPC = {"vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"}
_CLASSIFICATION = (
    "vtab/caltech101", "cifar10", "vtab/cifar100", "vtab/clevr_count_all",
    "vtab/clevr_closest_object_distance", "country211", "vtab/dtd", "vtab/eurosat",
    "fgvc_aircraft", "food101", "gtsrb", "imagenet1k", "imagenet_sketch", "imagenetv2",
    "imagenet-a", "imagenet-o", "imagenet-r", "vtab/kitti_closest_vehicle_distance", "mnist",
    "objectnet", "vtab/flowers", "vtab/pets", "voc2007", "vtab/pcam", "renderedsst2",
    "vtab/resisc45", "cars", "stl10", "sun397", "vtab/svhn", "wilds/camelyon17")
_RETRIEVAL = ("retrieval/flickr30k", "retrieval/mscoco_2014_5k_test_image_text_retrieval")
_UNSUPPORTED = {
    "misc/winogavil": "metric jaccard_score_10-12 is not implemented",
    "wilds/iwildcam": "metric F1-macro_all is not implemented",
    "wilds/fmow": "metric acc_worst_region needs region metadata: not implemented",
    "fairness/dollar_street": "metric acc_top5_wg needs group metadata: not implemented",
    "fairness/geode": "metric acc_wg needs group metadata: not implemented",
}


def _folders(task):
  flat = task.replace("/", "-")
  return ("wds_" + flat, flat, task.split("/")[-1])


def _entry(task):
  name = task.split("/")[-1]
  cb_key = name if name != "mscoco_2014_5k_test_image_text_retrieval" else None
  if task in _RETRIEVAL:
    return dict(name=name, folders=_folders(task), kind="retrieval")   # scored by mean R@1
  extra = {"cb_by_folder": {"wds_vtab-caltech101": "caltech101_vtab"}} if name == "caltech101" \
      else {}
  return dict(name=name, folders=_folders(task), kind="zeroshot", cb=cb_key,
              metric="mean_per_class" if task in _MPC else "top1", **extra)


TASKS = tuple(_entry(t) for t in _CLASSIFICATION + _RETRIEVAL) + tuple(
    dict(name=t.split("/")[-1], folders=_folders(t), skip=why) for t, why in _UNSUPPORTED.items())
assert len(TASKS) == 38


def get_config(arg=None):
  arg = common.parse_arg(arg, root="", models="", tasks="", run="demo", run_arg="")
  return eval_mode26.suite_config("datacomp38", arg)
