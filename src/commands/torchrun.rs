//! `se-compile train --engine torchrun`: the same spec, recipe and run directory, trained by
//! PyTorch DDP. The model is exported into RUN_DIR/torch (model.py, the seeded initial weights,
//! train.py, recipe.json with the recipe as overridden on the command line) and `torchrun`
//! runs train.py there. se-compile writes no all-reduce of its own.

use super::shared::{EXIT_INVALID, EXIT_USAGE};
use se_compile::export::Weights;
use se_compile::lower::layers::Net;
use se_compile::spec::recipe::TrainConfig;
use se_compile::{SourceFile, ValidGraph};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, Default, PartialEq, clap::ValueEnum)]
pub enum Engine {
    /// se-compile's own network (--device cpu or cuda).
    #[default]
    Se,
    /// PyTorch DistributedDataParallel launched by torchrun (NCCL on GPUs, gloo on CPUs).
    Torchrun,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct LaunchFlags {
    /// Who trains: se-compile itself, or PyTorch DDP through torchrun.
    #[arg(long, value_enum, default_value = "se")]
    pub engine: Engine,
    /// torchrun: processes per node (one per GPU; on the CPU, gloo processes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nproc_per_node: usize,
    /// torchrun: number of nodes; with more than one, give --node-rank and --rdzv-endpoint.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nnodes: usize,
    /// torchrun: this node's rank (0 .. nnodes-1).
    #[arg(long, value_name = "R")]
    pub node_rank: Option<usize>,
    /// torchrun: HOST:PORT of the rendezvous (c10d), reachable from every node.
    #[arg(long, value_name = "HOST:PORT")]
    pub rdzv_endpoint: Option<String>,
    /// torchrun: SyncBatchNorm, batch statistics over the global batch (CUDA only).
    #[arg(long)]
    pub sync_bn: bool,
    /// torchrun: data loader processes per rank.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    /// The torchrun program (default: $SE_COMPILE_TORCHRUN, else `torchrun` on PATH).
    #[arg(long, value_name = "PATH")]
    pub torchrun: Option<String>,
}

fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    EXIT_USAGE
}

/// `torchrun`: the flag, the environment, or PATH; an error that says how to install it.
fn find_torchrun(flag: &Option<String>) -> Result<PathBuf, u8> {
    let hint = "install PyTorch: python3 -m venv V && V/bin/pip install torch numpy pillow safetensors, then pass --torchrun V/bin/torchrun (or put V/bin on PATH)";
    if let Some(p) = flag
        .clone()
        .or_else(|| std::env::var("SE_COMPILE_TORCHRUN").ok())
    {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(usage(format!("{}: no such program; {hint}", p.display())))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("torchrun"))
        .find(|p| p.is_file())
        .ok_or_else(|| usage(format!("torchrun not found on PATH; {hint}")))
}

/// The torchrun command line for `flags`, running `script` with `script_args`.
pub fn command(
    torchrun: &Path,
    flags: &LaunchFlags,
    script: &Path,
    script_args: &[String],
) -> Result<Command, u8> {
    let mut cmd = Command::new(torchrun);
    cmd.arg(format!("--nproc-per-node={}", flags.nproc_per_node.max(1)));
    if flags.nnodes > 1 {
        let (Some(rank), Some(ep)) = (flags.node_rank, &flags.rdzv_endpoint) else {
            return Err(usage(
                "--nnodes > 1 needs --node-rank R and --rdzv-endpoint HOST:PORT (the same endpoint on every node)",
            ));
        };
        if rank >= flags.nnodes {
            return Err(usage(format!(
                "--node-rank {rank} is not below --nnodes {}",
                flags.nnodes
            )));
        }
        cmd.arg(format!("--nnodes={}", flags.nnodes))
            .arg(format!("--node-rank={rank}"))
            .arg("--rdzv-backend=c10d")
            .arg(format!("--rdzv-endpoint={ep}"));
    } else {
        cmd.arg("--standalone");
    }
    cmd.arg(script).args(script_args);
    Ok(cmd)
}

pub struct TorchRun<'a> {
    pub vg: &'a ValidGraph,
    pub src: &'a SourceFile,
    pub cfg: &'a TrainConfig,
    pub data: PathBuf,
    /// `--val-data`: validation shards.
    pub val_data: Option<String>,
    pub out: PathBuf,
    pub resume: bool,
    /// False: `--no-tensorboard` (train.py writes no RUN_DIR/tb).
    pub tensorboard: bool,
    pub flags: &'a LaunchFlags,
}

pub fn run(t: TorchRun) -> Result<(), u8> {
    let torchrun = find_torchrun(&t.flags.torchrun)?;
    if t.resume && !t.out.join("last.safetensors").is_file() {
        return Err(usage(format!(
            "{}: has no last.safetensors; --resume needs a run with a finished epoch",
            t.out.display()
        )));
    }
    // The export: the seeded initial weights `se-compile train` would start from.
    let net = Net::new(t.vg, t.cfg.seed);
    let w = Weights::from_model(&net);
    let dir = t.out.join("torch");
    super::export::write_pytorch_dir(t.vg, t.src, &w, t.cfg, &dir)?;
    let mut args = vec![
        "--data".to_string(),
        t.data.display().to_string(),
        "--workers".into(),
        t.flags.workers.to_string(),
    ];
    if let Some(v) = &t.val_data {
        args.extend(["--val-data".into(), v.clone()]);
    }
    if t.resume {
        args.extend(["--resume".into(), t.out.display().to_string()]);
    } else {
        args.extend(["--out".into(), t.out.display().to_string()]);
    }
    if t.flags.sync_bn {
        args.push("--sync-bn".into());
    }
    if !t.tensorboard {
        args.push("--no-tensorboard".into());
    }
    let mut cmd = command(&torchrun, t.flags, &dir.join("train.py"), &args)?;
    println!(
        "exported {} to {}; running {}",
        t.vg.graph().model,
        dir.display(),
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cmd.status().map_err(|e| {
        usage(format!(
            "cannot run {}: {e}; install PyTorch (pip install torch)",
            torchrun.display()
        ))
    })?;
    if !status.success() {
        eprintln!(
            "error: torchrun failed ({status}); its messages are above. The run directory {} keeps every finished epoch (continue with --resume)",
            t.out.display()
        );
        return Err(EXIT_INVALID);
    }
    // The plots se-compile draws for its own runs, from train.py's history.
    if let Ok(text) = std::fs::read_to_string(t.out.join("history.json")) {
        if let Ok(hist) = serde_json::from_str::<Vec<se_compile::train::run::EpochRecord>>(&text) {
            let _ = se_compile::train::run::plot_history(&t.out, &hist);
        }
    }
    Ok(())
}
