"""The admission webhook: the rules of `nvsentinel.policy.admission`, served over HTTPS to the API server."""
