//! Being written: the fault-injecting proxy.
