"""All Ray code of mmsn: Ray Train worker loops, Tune trainables that chain pretraining segments and
linear probes, and the sweep driver behind ``mmsn sweep``. ``mmsn/`` itself never imports Ray."""
