"""k-means frame labels for HuBERT (``speechcl cluster``): features per encoder frame (:mod:`.features`),
k-means (:mod:`.kmeans`) and the resumable driver that writes ``<split>.<ext>`` beside the manifests
(:mod:`.run`; the file format is :mod:`speechcl.data.frame_labels`)."""

from speechcl.cluster.features import FrameFeatures, MfccFeatures, ModelFeatures, match_frames
from speechcl.cluster.kmeans import KMeansConfig, assign_labels, fit_kmeans, nearest_centres
from speechcl.cluster.run import ClusterSummary, cluster_manifests, sample_items

__all__ = ["ClusterSummary", "FrameFeatures", "KMeansConfig", "MfccFeatures", "ModelFeatures", "assign_labels",
           "cluster_manifests", "fit_kmeans", "match_frames", "nearest_centres", "sample_items"]
