"""`nvsentinel demo`: the whole system on one machine, with a scripted fault sequence (docs/demo.md)."""
