//! Inference engines behind one trait. tract (pure Rust, CPU) is always built; ONNX Runtime
//! (CPU, and TensorRT on the Jetson; feature `ort` / `tensorrt`) is loaded at run time and
//! preferred when it loads. The exporter's checks and calibration run the same [`TractEngine`]
//! that serves at the edge.

use anyhow::Context as _;
use fv_core::preprocess::InputTensor;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Sets the threads every engine may use for one inference, for the whole process: tract's
/// matrix kernels (a rayon pool of that size; without one tract runs on a single core) and the
/// intra-op threads of ONNX Runtime's one pool, which its first session makes (call this
/// before loading a model). `None` means the cores this process may use. Returns the count
/// applied.
pub fn set_threads(threads: Option<usize>) -> usize {
    let n = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let executor = if n > 1 {
        tract_linalg::multithread::Executor::multithread_with_name(n, "fv-tract")
    } else {
        tract_linalg::multithread::Executor::SingleThread
    };
    tract_linalg::multithread::set_default_executor(executor);
    #[cfg(feature = "ort")]
    onnxruntime::INTRA_THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
    n
}

/// Runs one model on one input tensor.
pub trait Engine: Send {
    /// Engine name for logs and results (`tract`).
    fn name(&self) -> &'static str;
    /// Every output of the graph, flattened, as f32.
    fn run(&mut self, input: &InputTensor) -> anyhow::Result<Vec<Vec<f32>>>;
    /// Where one inference's time goes, by operator, over `runs` runs; `None` where the
    /// engine cannot say (ONNX Runtime has its own profiler, which writes a file).
    fn profile(
        &mut self,
        _input: &InputTensor,
        _runs: usize,
    ) -> anyhow::Result<Option<Vec<OpTime>>> {
        Ok(None)
    }
}

/// The time one kind of operator took in one inference, on average.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    /// The engine's name for the operator as it runs (tract: `DepthWise`, `OptMatMul`, …).
    pub op: String,
    /// Nodes of this kind in the graph as it runs.
    pub nodes: usize,
    /// Milliseconds per inference, all nodes of this kind together.
    pub ms: f64,
    /// Share of the inference, 0–1.
    pub share: f64,
}

/// tract: loads the ONNX file, fixes the input shape, optimizes once.
pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    shape: Vec<usize>,
}

impl TractEngine {
    /// Loads `path` with the input fixed to `shape` (f32; NCHW with batch 1 for the models).
    pub fn load(path: &Path, shape: &[usize]) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_bytes(&bytes, path, shape)
    }

    /// Builds the engine from the ONNX bytes of `path` (named in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path, shape: &[usize]) -> anyhow::Result<Self> {
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .with_context(|| format!("{}: tract cannot read this ONNX file", path.display()))?
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()
            .with_context(|| format!("{}: tract cannot optimize this graph", path.display()))?
            .into_runnable()?;
        Ok(TractEngine {
            plan,
            shape: shape.to_vec(),
        })
    }

    /// Every output of the graph for `x` (row-major, the shape given at load), flattened, as
    /// f32. Takes `&self`: one optimised plan serves many threads (the trainer's checks).
    pub fn run_values(&self, x: &[f32]) -> anyhow::Result<Vec<Vec<f32>>> {
        let x = Tensor::from_shape(&self.shape, x)?;
        let out = self.plan.run(tvec!(x.into()))?;
        out.iter()
            .map(|t| {
                let t = t.cast_to::<f32>()?;
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            })
            .collect()
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, input: &InputTensor) -> anyhow::Result<Vec<Vec<f32>>> {
        anyhow::ensure!(
            input.shape[..] == self.shape[..],
            "input shape {:?} is not the model's {:?}",
            input.shape,
            self.shape
        );
        self.run_values(&input.data)
    }

    /// Times every node of the optimised plan through tract's own evaluation hook, and sums
    /// the nodes by operator: what tract's `--profile` shows, without its CLI.
    fn profile(&mut self, input: &InputTensor, runs: usize) -> anyhow::Result<Option<Vec<OpTime>>> {
        use std::collections::BTreeMap;
        use std::time::Instant;
        let x: TValue = Tensor::from_shape(&input.shape, &input.data)?.into();
        let mut state = self.plan.spawn()?;
        let mut by_node: BTreeMap<usize, (String, f64)> = BTreeMap::new();
        let runs = runs.max(1);
        for _ in 0..runs {
            state.run_plan_with_eval(tvec!(x.clone()), |ctx, op_state, node, inputs| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                by_node
                    .entry(node.id)
                    .or_insert_with(|| (node.op().name().into_owned(), 0.0))
                    .1 += ms;
                out
            })?;
        }
        let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
        for (op, ms) in by_node.into_values() {
            let e = by_op.entry(op).or_default();
            e.0 += 1;
            e.1 += ms / runs as f64;
        }
        let total: f64 = by_op.values().map(|(_, ms)| ms).sum();
        let mut ops: Vec<OpTime> = by_op
            .into_iter()
            .map(|(op, (nodes, ms))| OpTime {
                op,
                nodes,
                ms,
                share: if total > 0.0 { ms / total } else { 0.0 },
            })
            .collect();
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(Some(ops))
    }
}

/// Which engine runs the models.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// The fastest that works here: ONNX Runtime when its library loads and takes the model
    /// (TensorRT, then CUDA, first in a `tensorrt` build), else tract. Which one ran is logged
    /// at start and named in every result, status and heartbeat.
    #[default]
    Auto,
    /// tract, pure Rust on the CPU (always built).
    Tract,
    /// ONNX Runtime, CPU provider (feature `ort`).
    OrtCpu,
    /// ONNX Runtime with TensorRT, falling back to CUDA, then CPU (feature `tensorrt`).
    Tensorrt,
}

/// ONNX Runtime, loaded at run time from `ORT_DYLIB_PATH` (or the configured library).
#[cfg(feature = "ort")]
pub mod onnxruntime {
    use super::Engine;
    #[cfg(feature = "tensorrt")]
    use anyhow::Context as _;
    use fv_core::preprocess::InputTensor;
    use ort::environment::GlobalThreadPoolOptions;
    #[cfg(feature = "tensorrt")]
    use ort::ep::ExecutionProvider as _;
    use ort::session::Session;
    use ort::value::Tensor;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    /// Execution providers, best first.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Provider {
        /// TensorRT (fp16, int8 when the model is QDQ), engines cached on disk.
        TensorRt,
        /// CUDA.
        Cuda,
        /// CPU.
        Cpu,
    }

    /// The environment, with the intra-op thread count its one pool was made with.
    static ENV: OnceLock<Result<(ort::environment::Environment, usize), String>> = OnceLock::new();

    /// Intra-op threads of ONNX Runtime's pool (0: ONNX Runtime's default, one per core); set
    /// with tract's by [`super::set_threads`], so that the two run on equal terms. The pool is
    /// made with the first session; a count set after that applies to tract only.
    pub static INTRA_THREADS: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// The process's ONNX Runtime, loaded once from `dylib` or `ORT_DYLIB_PATH`.
    pub fn environment(
        dylib: Option<&Path>,
    ) -> anyhow::Result<&'static ort::environment::Environment> {
        let r = ENV.get_or_init(|| {
            let path: PathBuf = dylib
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
                .ok_or("no ONNX Runtime library: set ORT_DYLIB_PATH to libonnxruntime.so.1.x (e.g. from the onnxruntime wheel, or onnxruntime-gpu on a Jetson)")?;
            let builder = ort::init_from(&path)
                .map_err(|e| format!("{}: cannot load ONNX Runtime: {e}", path.display()))?;
            // One intra-op pool for every session, rather than one per session: a reading
            // runs the classifier's session, then the detector's, and with a pool each the
            // first pool's threads were still spin-waiting while the second ran, on the same
            // cores (measured in BENCHMARKS.md, 2026-12-06).
            let threads = INTRA_THREADS.load(std::sync::atomic::Ordering::Relaxed);
            let pool = GlobalThreadPoolOptions::default()
                .with_intra_threads(threads)
                .and_then(|p| p.with_spin_control(true))
                .map_err(|e| format!("ONNX Runtime's thread pool: {e}"))?;
            builder
                .with_name("fractuvision")
                .with_global_thread_pool(pool)
                .build()
                .map(|env| (env, threads))
                .map_err(|e| format!("{}: cannot start ONNX Runtime: {e}", path.display()))
        });
        let (env, made) = r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let asked = INTRA_THREADS.load(std::sync::atomic::Ordering::Relaxed);
        if asked != *made {
            tracing::warn!(
                "ONNX Runtime's thread pool was made with {made} threads (0: one per core); \
                 {asked} asked later applies to tract only"
            );
        }
        Ok(env)
    }

    /// An ONNX Runtime session on the best provider that registers.
    pub struct OrtEngine {
        session: Session,
        shape: Vec<i64>,
        /// The provider in use.
        pub provider: Provider,
    }

    impl OrtEngine {
        /// Loads `path`, trying `want` and then the providers after it (TensorRT → CUDA →
        /// CPU), logging why each one that fails was skipped. TensorRT engines are cached in
        /// `cache/<sha256 of the model>/`; ONNX Runtime names each engine by GPU and TensorRT
        /// version, so a new board or a TensorRT upgrade builds a fresh one.
        pub fn load(
            path: &Path,
            shape: [usize; 4],
            want: Provider,
            cache: &Path,
            sha256: &str,
        ) -> anyhow::Result<Self> {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
            Self::from_bytes(&bytes, path, shape, want, cache, sha256)
        }

        /// [`OrtEngine::load`] from the ONNX bytes of `path` (named in errors).
        pub fn from_bytes(
            bytes: &[u8],
            path: &Path,
            shape: [usize; 4],
            want: Provider,
            cache: &Path,
            sha256: &str,
        ) -> anyhow::Result<Self> {
            let env = environment(None)?;
            let chain: &[Provider] = match want {
                Provider::TensorRt => &[Provider::TensorRt, Provider::Cuda, Provider::Cpu],
                Provider::Cuda => &[Provider::Cuda, Provider::Cpu],
                Provider::Cpu => &[Provider::Cpu],
            };
            for &p in chain {
                // On x86-64 without VNNI (AVX2 only, as on the CI machine) ONNX Runtime's
                // fused U8S8 kernels saturate 16-bit pair sums: the int8 detector's scores moved
                // 0.05 from its own unfused QDQ and 0.16 from tract's. The U8U8 kernels this asks
                // for agree within 0.011; elsewhere (VNNI, ARM) it changes nothing.
                // Intra-op threads: the environment's one pool (see `environment`).
                let mut b = Session::builder(env)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .with_precise_qmm()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let registered: Result<(), String> = match p {
                    #[cfg(not(feature = "tensorrt"))]
                    Provider::TensorRt | Provider::Cuda => {
                        let _ = (cache, sha256);
                        Err("built without the `tensorrt` feature".into())
                    }
                    #[cfg(feature = "tensorrt")]
                    Provider::TensorRt => {
                        let dir = cache.join(sha256);
                        std::fs::create_dir_all(&dir)
                            .with_context(|| format!("{}: cannot create", dir.display()))?;
                        ort::ep::TensorRT::default()
                            .with_fp16(true)
                            .with_int8(true)
                            .with_engine_cache(true)
                            .with_engine_cache_path(dir.display().to_string())
                            .with_timing_cache(true)
                            .with_timing_cache_path(dir.display().to_string())
                            .register(&mut b)
                            .map_err(|e| e.to_string())
                    }
                    #[cfg(feature = "tensorrt")]
                    Provider::Cuda => ort::ep::CUDA::default()
                        .register(&mut b)
                        .map_err(|e| e.to_string()),
                    Provider::Cpu => Ok(()),
                };
                if let Err(e) = registered {
                    tracing::warn!(
                        "{}: {p:?} is not available ({e}); trying the next provider",
                        path.display()
                    );
                    continue;
                }
                #[cfg(feature = "tensorrt")]
                if p == Provider::TensorRt {
                    check_engine_cache(&cache.join(sha256));
                }
                let session = b.commit_from_memory(bytes).map_err(|e| {
                    anyhow::anyhow!("{}: ONNX Runtime cannot load it: {e}", path.display())
                })?;
                #[cfg(feature = "tensorrt")]
                if p == Provider::TensorRt {
                    record_engine_cache(&cache.join(sha256));
                }
                return Ok(OrtEngine {
                    session,
                    shape: shape.iter().map(|&d| d as i64).collect(),
                    provider: p,
                });
            }
            anyhow::bail!(
                "{}: no ONNX Runtime provider could be registered",
                path.display()
            )
        }
    }

    /// `SHA256SUMS` in a TensorRT engine cache: the hash of every file ONNX Runtime wrote
    /// there, recorded after the session that built them came up.
    #[cfg(any(feature = "tensorrt", test))]
    const SUMS: &str = "SHA256SUMS";

    #[cfg(any(feature = "tensorrt", test))]
    fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != SUMS))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[cfg(any(feature = "tensorrt", test))]
    fn sums_of(dir: &Path) -> String {
        cache_files(dir)
            .iter()
            .filter_map(|p| {
                let bytes = std::fs::read(p).ok()?;
                Some(format!(
                    "{}  {}\n",
                    fv_core::manifest::sha256_hex(&bytes),
                    p.file_name()?.to_string_lossy()
                ))
            })
            .collect()
    }

    /// Records the hashes of the engines in `dir`.
    #[cfg(any(feature = "tensorrt", test))]
    pub(crate) fn record_engine_cache(dir: &Path) {
        if let Err(e) = std::fs::write(dir.join(SUMS), sums_of(dir)) {
            tracing::warn!("{}: cannot record the engine hashes: {e}", dir.display());
        }
    }

    /// Before ONNX Runtime deserializes an engine from `dir`, checks every file against the
    /// recorded hashes; a cache that does not match them (an engine altered or put there by
    /// someone else, or never recorded) is removed, so that TensorRT builds it again from
    /// the checked model instead of running bytes nobody checked.
    #[cfg(any(feature = "tensorrt", test))]
    pub(crate) fn check_engine_cache(dir: &Path) -> bool {
        if cache_files(dir).is_empty() {
            return true;
        }
        let recorded = std::fs::read_to_string(dir.join(SUMS)).unwrap_or_default();
        if recorded == sums_of(dir) {
            return true;
        }
        tracing::warn!(
            "{}: the TensorRT engine cache does not match its recorded hashes; removing it (the engine is built again)",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::create_dir_all(dir);
        false
    }

    impl Engine for OrtEngine {
        fn name(&self) -> &'static str {
            match self.provider {
                Provider::TensorRt => "onnxruntime-tensorrt",
                Provider::Cuda => "onnxruntime-cuda",
                Provider::Cpu => "onnxruntime-cpu",
            }
        }

        fn run(&mut self, input: &InputTensor) -> anyhow::Result<Vec<Vec<f32>>> {
            let x = Tensor::from_array((self.shape.clone(), input.data.clone()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = self
                .session
                .run(ort::inputs![x])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut v = Vec::new();
            for (_, value) in out.iter() {
                let (_, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                v.push(data.to_vec());
            }
            Ok(v)
        }
    }
}

#[cfg(all(test, feature = "ort"))]
mod tests {
    use super::onnxruntime::{check_engine_cache, record_engine_cache};

    #[test]
    fn an_engine_cache_that_does_not_match_its_hashes_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("abc");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_engine_cache(&dir), "an empty cache is fine");
        std::fs::write(dir.join("model.engine"), b"engine bytes").unwrap();
        assert!(!check_engine_cache(&dir), "an unrecorded engine is not run");
        assert!(!dir.join("model.engine").exists());
        std::fs::write(dir.join("model.engine"), b"engine bytes").unwrap();
        record_engine_cache(&dir);
        assert!(check_engine_cache(&dir), "the recorded engine is kept");
        std::fs::write(dir.join("model.engine"), b"other bytes!").unwrap();
        assert!(!check_engine_cache(&dir), "an altered engine is removed");
        assert!(!dir.join("model.engine").exists());
    }
}
