"""The resolution controller (SPEC §7): a healthy event resolves the open fatal events it answers, and a
node left with none is released (taint and annotation removed, uncordoned only when the cordon is ours).

`logic` is pure (no I/O, time passed in); `controller` reads the informers and writes; `config` holds
the settings.
"""
