//! wisp's cold-start and load benchmarks against their anchors (crun, runc,
//! `wasmtime serve`, a minimal hyper proxy). Nothing is here yet: the
//! benchmark work lands with `wisp bench`.
