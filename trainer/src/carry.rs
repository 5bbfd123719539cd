//! Resume points that travel in git, so that a run longer than one session outlives the
//! machine it started on.
//!
//! `runs/` is not kept when a session starts on a fresh machine. [`pack`] copies the one thing
//! a run needs to go on (its latest resume point: weights, optimizer state, `state.json`)
//! and what its report needs later (the best epoch's weights, the logs, the exact command)
//! into `checkpoints/<run>/`, small enough to commit (about 17 MB for the 5.4 M-parameter
//! detector, 27 MB with `--ema`, 37 MB with it when the point is not the best epoch's end):
//! weights, their moving average (runs with `--ema`) and the best checkpoint in f16; AdamW's
//! second moment in bf16 (it underflows f16), which sets each weight's step size over ~1000
//! steps; its first moment is not kept (zeros: momentum at β1 = 0.9 rebuilds within a few
//! dozen steps, and keeping it would cost another 10 MB a commit); each file
//! gzipped. [`unpack`] restores the run folder in f32 and [`resume_command`] gives the
//! command that continues it. The resumed run is close to, not bit-for-bit, the run that
//! would have gone on (a resume within one machine, from `RUN/resume-*`, stays exact).

use crate::run::fit::FitState;
use crate::run::AVERAGE_FILE;
use anyhow::Context as _;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The run's small files that travel as they are (those that exist).
const AS_IS: [&str; 9] = [
    "state.json",
    "config.json",
    "task",
    "command.txt",
    "command.json",
    "git_commit.txt",
    "train_log.csv",
    "train_summary.json",
    "data.json",
];

/// What a pack holds besides the files: `checkpoints/<run>/carry.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CarryRecord {
    /// The run folder the pack restores, as the run's command named it.
    pub run: PathBuf,
    /// The resume point's folder name (`resume-eEEE-sSSSSSS`), which sorts by progress.
    pub resume_dir: String,
    /// The command that started the run, its program first.
    pub command: Vec<String>,
    /// Bytes of the packed files.
    pub bytes: u64,
}

/// How a tensor is stored in the pack.
#[derive(Clone, Copy)]
enum Narrow {
    F16,
    Bf16,
}

fn narrow_f32(bytes: &[u8], to: Narrow) -> Vec<u8> {
    bytes
        .chunks_exact(4)
        .flat_map(|c| {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            match to {
                Narrow::F16 => half::f16::from_f32(v).to_le_bytes(),
                Narrow::Bf16 => half::bf16::from_f32(v).to_le_bytes(),
            }
        })
        .collect()
}

fn widen(bytes: &[u8], from: Narrow) -> Vec<u8> {
    bytes
        .chunks_exact(2)
        .flat_map(|c| {
            let v = match from {
                Narrow::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                Narrow::Bf16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            };
            v.to_le_bytes()
        })
        .collect()
}

/// Rewrites a burnpack file with its f32 tensors narrowed (`Some`) or its 16-bit ones widened
/// back to f32 (`None`); every other tensor, name, parameter id, scalar and metadata entry is
/// kept.
fn convert_burnpack(from: &Path, to: &Path, narrow: Option<Narrow>) -> anyhow::Result<()> {
    let cannot = |e: burn_pack::Error| anyhow::anyhow!("{}: {e}", from.display());
    let reader = if narrow.is_none() {
        // A pack's files are gzipped.
        let bytes = gunzip(from)?;
        burn_pack::Reader::from_bytes(burn_pack::Bytes::from_bytes_vec(bytes)).map_err(cannot)?
    } else {
        burn_pack::Reader::from_file_exact(from).map_err(cannot)?
    };
    let scalars = reader.scalars().clone();
    let metadata = reader.metadata().clone();
    let mut tensors = Vec::new();
    for t in reader.into_tensors().map_err(cannot)? {
        let (name, dtype, shape, id, bytes) = t.into_parts().map_err(cannot)?;
        let (dtype, bytes) = match (dtype, narrow) {
            // AdamW's first moment: not carried (see the module's note).
            (DType::F32, Some(Narrow::Bf16)) if name.ends_with("moment_1") => {
                (DType::BF16, vec![0u8; bytes.len() / 2])
            }
            (DType::F32, Some(n)) => (
                match n {
                    Narrow::F16 => DType::F16,
                    Narrow::Bf16 => DType::BF16,
                },
                narrow_f32(&bytes, n),
            ),
            (DType::F16, None) => (DType::F32, widen(&bytes, Narrow::F16)),
            (DType::BF16, None) => (DType::F32, widen(&bytes, Narrow::Bf16)),
            (d, _) => (d, bytes.to_vec()),
        };
        tensors.push(burn_pack::Tensor::new(
            name,
            dtype,
            shape,
            id,
            burn_pack::Bytes::from_bytes_vec(bytes),
        ));
    }
    let mut writer = burn_pack::Writer::new(tensors)
        .auto_extension(false)
        .overwrite(true);
    for (k, v) in &scalars {
        writer = writer.with_scalar(k, *v);
    }
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    match narrow {
        Some(_) => {
            let bytes = writer
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", to.display()))?;
            gzip(&bytes, to)
        }
        None => writer
            .write_to_file(to)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", to.display())),
    }
}

fn gzip(bytes: &[u8], to: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file =
        std::fs::File::create(to).with_context(|| format!("{}: cannot create", to.display()))?;
    let mut z = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    z.write_all(bytes)
        .and_then(|()| z.finish())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot write", to.display()))
}

fn gunzip(from: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(from).with_context(|| format!("{}: cannot read", from.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .with_context(|| format!("{}: not a gzipped pack file", from.display()))?;
    Ok(out)
}

/// Rewrites a safetensors checkpoint with its f32 tensors in f16 (`narrow`) or back.
fn convert_safetensors(from: &Path, to: &Path, narrow: bool) -> anyhow::Result<()> {
    if narrow {
        narrow_checkpoint(from, to).map(|_| ())
    } else {
        let out = widened_checkpoint(from)?;
        std::fs::write(to, out).with_context(|| format!("{}: cannot write", to.display()))
    }
}

/// Packs the safetensors checkpoint `from` into `to`: f32 tensors in f16, gzipped. Returns
/// the number of tensors.
pub fn narrow_checkpoint(from: &Path, to: &Path) -> anyhow::Result<usize> {
    let bytes = std::fs::read(from).with_context(|| format!("{}: cannot read", from.display()))?;
    write_narrowed(&bytes, from, to)
}

/// Writes `bytes` (safetensors, read from `from`) to `to` as a packed checkpoint: f32 tensors
/// in f16, gzipped. Returns the number of tensors.
pub fn write_narrowed(bytes: &[u8], from: &Path, to: &Path) -> anyhow::Result<usize> {
    let (packed, n) = converted(bytes, from, true)?;
    gzip(&packed, to)?;
    Ok(n)
}

/// A packed checkpoint (`*.safetensors.gz`, f16) as f32 safetensors bytes: what `--weights`
/// reads when it is given one, so that a run can start from another run's kept weights.
pub fn widened_checkpoint(from: &Path) -> anyhow::Result<Vec<u8>> {
    converted(&gunzip(from)?, from, false).map(|(bytes, _)| bytes)
}

/// `bytes` (the safetensors file `from`) with its f32 tensors in f16 (`narrow`) or its f16
/// ones in f32, other tensors as they are; and how many tensors it holds.
fn converted(bytes: &[u8], from: &Path, narrow: bool) -> anyhow::Result<(Vec<u8>, usize)> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", from.display()))?;
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (dtype, data) = match (view.dtype(), narrow) {
            (Dtype::F32, true) => (Dtype::F16, narrow_f32(view.data(), Narrow::F16)),
            (Dtype::F16, false) => (Dtype::F32, widen(view.data(), Narrow::F16)),
            (d, _) => (d, view.data().to_vec()),
        };
        out.push((name, dtype, view.shape().to_vec(), data));
    }
    let views = out
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| anyhow::anyhow!("{}: cannot convert: {e}", from.display()))?;
    Ok((bytes, out.len()))
}

/// The command that started `run`: `command.json` (arguments as given), else `command.txt`
/// split at white space (runs started before `command.json` existed).
fn recorded_command(run: &Path) -> anyhow::Result<Vec<String>> {
    if let Ok(text) = std::fs::read_to_string(run.join("command.json")) {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a list of arguments",
                run.join("command.json").display()
            )
        });
    }
    let path = run.join("command.txt");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read; the run's command is needed to resume it",
            path.display()
        )
    })?;
    Ok(text.split_whitespace().map(str::to_owned).collect())
}

/// The run folder a command trains into (its `--out`).
fn out_of(command: &[String]) -> Option<PathBuf> {
    command
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| command.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            command
                .iter()
                .find_map(|a| a.strip_prefix("--out=").map(PathBuf::from))
        })
}

/// A run's `state.json`, whatever its task's epoch records hold, and its latest resume point's
/// folder name.
fn state_of(path: &Path) -> anyhow::Result<(FitState<serde_json::Value>, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read; is this a training run?", path.display()))?;
    let state: FitState<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run's state", path.display()))?;
    let point = state
        .resume_dir
        .clone()
        .with_context(|| format!("{}: names no resume point yet", path.display()))?;
    Ok((state, point))
}

/// Packs `run`'s latest resume point into `dest` (replaced whole, never left half-written).
pub fn pack(run: &Path, dest: &Path) -> anyhow::Result<CarryRecord> {
    let (state, resume_dir) = state_of(&run.join("state.json"))?;
    let command = recorded_command(run)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".carry-")
        .tempdir_in(parent)
        .with_context(|| format!("{}: cannot write", parent.display()))?;
    for name in AS_IS {
        let from = run.join(name);
        if from.is_file() {
            std::fs::copy(&from, tmp.path().join(name))
                .with_context(|| format!("{}: cannot copy", from.display()))?;
        }
    }
    let point = run.join(&resume_dir);
    convert_burnpack(
        &point.join("model.bpk"),
        &tmp.path().join("model.bpk.gz"),
        Some(Narrow::F16),
    )?;
    convert_burnpack(
        &point.join("optim.bpk"),
        &tmp.path().join("optim.bpk.gz"),
        Some(Narrow::Bf16),
    )?;
    if point.join(AVERAGE_FILE).is_file() {
        convert_burnpack(
            &point.join(AVERAGE_FILE),
            &tmp.path().join(format!("{AVERAGE_FILE}.gz")),
            Some(Narrow::F16),
        )?;
    }
    // At an epoch's end that is the best epoch, the best checkpoint is the resume point's own
    // evaluated weights, which a resume writes again (`run::fit`): 10 MB a commit saved.
    if run.join("best.safetensors").is_file() && !state.at_best_epoch_end() {
        convert_safetensors(
            &run.join("best.safetensors"),
            &tmp.path().join("best.safetensors.gz"),
            true,
        )?;
    }
    let mut bytes = 0;
    for e in std::fs::read_dir(tmp.path())?.flatten() {
        bytes += e.metadata()?.len();
    }
    let record = CarryRecord {
        run: out_of(&command).unwrap_or_else(|| run.to_path_buf()),
        resume_dir,
        command,
        bytes,
    };
    std::fs::write(
        tmp.path().join("carry.json"),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    let old = parent.join(format!(
        ".carry-old-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("run")
    ));
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(dest, &old)
            .with_context(|| format!("{}: cannot replace", dest.display()))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dest).with_context(|| format!("{}: cannot write", dest.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(record)
}

/// Reads a pack's record.
pub fn record(pack: &Path) -> anyhow::Result<CarryRecord> {
    let path = pack.join("carry.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read; pass a folder written by `fv-train carry save`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a carry record", path.display()))
}

/// Restores the run folder a pack names, unless it already holds the same or a later resume
/// point (a run that went on since the pack was made is never set back). Returns the record
/// and whether anything was restored.
pub fn unpack(pack: &Path) -> anyhow::Result<(CarryRecord, bool)> {
    let record = record(pack)?;
    let run = &record.run;
    if let Ok((_, have)) = state_of(&run.join("state.json")) {
        if have >= record.resume_dir && run.join(&have).is_dir() {
            return Ok((record, false));
        }
    }
    let point = run.join(&record.resume_dir);
    std::fs::create_dir_all(&point)
        .with_context(|| format!("{}: cannot create", point.display()))?;
    convert_burnpack(&pack.join("model.bpk.gz"), &point.join("model.bpk"), None)?;
    convert_burnpack(&pack.join("optim.bpk.gz"), &point.join("optim.bpk"), None)?;
    let average = pack.join(format!("{AVERAGE_FILE}.gz"));
    if average.is_file() {
        convert_burnpack(&average, &point.join(AVERAGE_FILE), None)?;
    }
    if pack.join("best.safetensors.gz").is_file() {
        convert_safetensors(
            &pack.join("best.safetensors.gz"),
            &run.join("best.safetensors"),
            false,
        )?;
    }
    // state.json last: it names the resume point just written.
    for name in AS_IS.iter().filter(|n| **n != "state.json") {
        let from = pack.join(name);
        if from.is_file() {
            std::fs::copy(&from, run.join(name))
                .with_context(|| format!("{}: cannot restore", run.join(name).display()))?;
        }
    }
    std::fs::copy(pack.join("state.json"), run.join("state.json"))
        .with_context(|| format!("{}: cannot restore", run.join("state.json").display()))?;
    Ok((record, true))
}

/// The arguments (without the program) that continue a packed run: its command with
/// `--resume`, and `extra` after it; a flag in `extra` replaces the recorded one (a fresh
/// machine keeps the data elsewhere: `-- --data DIR`).
pub fn resume_command(record: &CarryRecord, extra: &[String]) -> Vec<String> {
    let given: Vec<&str> = extra
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut args = Vec::new();
    let mut recorded = record.command.iter().skip(1).peekable();
    while let Some(a) = recorded.next() {
        let flag = a
            .strip_prefix("--")
            .map(|f| f.split('=').next().unwrap_or(f));
        if flag.is_some_and(|f| given.contains(&f)) {
            if !a.contains('=') && recorded.peek().is_some_and(|v| !v.starts_with('-')) {
                recorded.next();
            }
            continue;
        }
        args.push(a.clone());
    }
    if !args.iter().chain(extra).any(|a| a == "--resume") {
        args.push("--resume".into());
    }
    args.extend(extra.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_keeps_values_to_their_precision_and_moments_their_range() {
        let v = [1.0f32, -0.3337, 1e-12, 65000.0, 0.0];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = |n| -> Vec<f32> {
            widen(&narrow_f32(&bytes, n), n)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let h = back(Narrow::F16);
        assert!((h[1] - v[1]).abs() < 1e-3 && h[0] == 1.0 && h[3] == 64992.0);
        assert_eq!(h[2], 0.0, "f16 loses a second moment of 1e-12");
        let b = back(Narrow::Bf16);
        assert!((b[2] / 1e-12 - 1.0).abs() < 1e-2, "bf16 keeps it: {}", b[2]);
    }

    #[test]
    fn the_run_folder_is_the_commands_out() {
        let c: Vec<String> = ["fv-train", "detect", "--out", "runs/a", "--seed", "1"]
            .map(String::from)
            .into();
        assert_eq!(out_of(&c), Some(PathBuf::from("runs/a")));
        let c: Vec<String> = ["fv-train", "detect", "--out=runs/b"]
            .map(String::from)
            .into();
        assert_eq!(out_of(&c), Some(PathBuf::from("runs/b")));
        let r = CarryRecord {
            run: "runs/a".into(),
            resume_dir: "resume-e001-s000000".into(),
            command: c,
            bytes: 0,
        };
        assert_eq!(
            resume_command(&r, &[]),
            ["detect", "--out=runs/b", "--resume"]
        );
        let r = CarryRecord {
            command: [
                "fv-train",
                "detect",
                "--data",
                "/old/FracAtlas",
                "--no-progress",
            ]
            .map(String::from)
            .into(),
            ..r
        };
        let extra: Vec<String> = ["--data", "/new/FracAtlas", "--max-steps", "5"]
            .map(String::from)
            .into();
        assert_eq!(
            resume_command(&r, &extra),
            [
                "detect",
                "--no-progress",
                "--resume",
                "--data",
                "/new/FracAtlas",
                "--max-steps",
                "5"
            ]
        );
    }

    #[test]
    fn a_kept_checkpoint_starts_a_run_as_it_is() {
        use burn::nn::LinearConfig;
        use burn::tensor::Device;
        let dir = tempfile::tempdir().unwrap();
        let (plain, packed) = (
            dir.path().join("best.safetensors"),
            dir.path().join("best.safetensors.gz"),
        );
        let device = Device::flex();
        let kept = LinearConfig::new(3, 2).init(&device);
        crate::run::save_checkpoint(&kept, &plain).unwrap();
        convert_safetensors(&plain, &packed, true).unwrap();

        let fresh = LinearConfig::new(3, 2).init(&device);
        let (loaded, report) = crate::weights::load_safetensors(fresh, &packed, &[], &[]).unwrap();
        assert_eq!(report.applied, 2);
        let values = |t: burn::tensor::Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in values(loaded.weight.val())
            .iter()
            .zip(values(kept.weight.val()))
        {
            assert!((a - b).abs() < 1e-3, "{a} against {b}");
        }

        std::fs::write(&packed, b"not gzip").unwrap();
        let e = crate::weights::load_safetensors(
            LinearConfig::new(3, 2).init(&device),
            &packed,
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("best.safetensors.gz") && e.contains("gzip"),
            "{e}"
        );
    }
}
