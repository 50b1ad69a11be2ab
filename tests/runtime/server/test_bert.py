"""A multi-input int64 model (the tiny BERT: input ids and attention mask, symbolic sequence
length) over both protocols: the final answers equal the original model's."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from server_helpers import grpc_client, grpc_inputs, http_client, http_inputs, make_workload, start_server


@pytest.fixture(scope="module")
def bert(tiny_bert_engine):
    workload = make_workload(tiny_bert_engine)
    srv = start_server(workload.engine_dir)
    yield workload, srv
    assert srv.stop()


def test_bert_over_http_and_grpc(bert) -> None:
    workload, srv = bert
    assert all(t.dtype == "int64" for t in workload.manifest.model.inputs) and len(workload.manifest.model.inputs) >= 2
    meta = grpc_client(srv).get_model_metadata(srv.spec.name)
    assert all(t.datatype == "INT64" and t.shape[0] == -1 for t in meta.inputs)
    g, h = grpc_client(srv), http_client(srv)
    out = workload.manifest.model.output
    params = {"apparate_wait_final": True}
    for i in range(0, 8, 2):
        expected = workload.expected(i, 2)
        np.testing.assert_allclose(
            g.infer(srv.spec.name, grpc_inputs(workload, i, 2), parameters=params).as_numpy(out),
            expected,
            rtol=1e-4,
            atol=1e-4,
        )
        got = h.infer(srv.spec.name, http_inputs(workload, i, 2, binary=bool(i % 4)), parameters=params).as_numpy(out)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    names = list(workload.inputs)
    only_first = grpcclient.InferInput(names[0], [1, 4], "INT64")
    only_first.set_data_from_numpy(np.zeros((1, 4), np.int64))
    with pytest.raises(Exception, match=f"input '{names[1]}' is missing"):
        g.infer(srv.spec.name, [only_first])
    wrong = [grpcclient.InferInput(name, [1, 4], "FP32" if k == 0 else "INT64") for k, name in enumerate(names)]
    for k, t in enumerate(wrong):
        t.set_data_from_numpy(np.zeros((1, 4), np.float32 if k == 0 else np.int64))
    with pytest.raises(Exception, match="datatype FP32, expected INT64"):
        g.infer(srv.spec.name, wrong)
