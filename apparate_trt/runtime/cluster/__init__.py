"""Serving beyond one process: replicas of the engine on Ray Serve behind the same protocol.

Needs the ``cluster`` extra (``pip install 'apparate_trt[cluster]'``, i.e. ``ray[serve]``); this
package imports Ray only when a function here runs, so ``import apparate_trt`` works without it.
:mod:`.replica` is one replica (an Engine answering event streams), :mod:`.remote_engine` the
ingress side (an Engine-shaped proxy the server's front ends use), :mod:`.deploy` the Ray Serve
deployment, its settings (:class:`~.deploy.ClusterConfig`) and the replicated server.
"""

from apparate_trt.runtime.cluster.deploy import ClusterConfig, ReplicatedServer, replica_deployment, serve_replicated

__all__ = ["ClusterConfig", "ReplicatedServer", "replica_deployment", "serve_replicated"]
