"""The Device API (gRPC) boundary: servicer, server lifecycle, HTTP health/metrics, settings.

This is where library errors become gRPC status codes (once, through `errors.GRPC_CODES`) and
where grpc may be imported; the core (store, fan-out, XID) must not import from here.
"""
