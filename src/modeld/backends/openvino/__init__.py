"""The OpenVINO backend: the IR driven through OpenVINO's PagedAttention transformation."""
