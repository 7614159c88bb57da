"""The exporter (`nvsentinel exporter`): each HealthEvent phase transition as a CloudEvent to a sink.

`logic` decides what to send (pure); `sender` speaks HTTP binary mode; `dispatcher` keeps per-event
order and retries; `checkpoint` remembers what was sent; `app` runs it under leader election.
"""
