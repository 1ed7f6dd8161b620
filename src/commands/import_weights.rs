//! `se-compile import-weights`: a PyTorch state dict (safetensors) into a se-compile checkpoint.

use super::shared::{check_parent, fail, Ctx, EXIT_USAGE};
use se_compile::export::import::{self, Mapping};
use se_compile::lower::plan;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MapArg {
    Auto,
    Timm,
    Keras,
}

/// Read a PyTorch state dict (safetensors) into a se-compile checkpoint for SPEC.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model('seresnet50').state_dict(), 'seresnet50.safetensors')\"\n  se-compile import-weights models/se_resnet50_timm.yaml --from seresnet50.safetensors -o se_resnet50_timm.safetensors\n  se-compile eval models/se_resnet50_timm.yaml --weights se_resnet50_timm.safetensors --data DIR\n\nEvery tensor is checked by name and shape; nothing is written on error."
)]
pub struct ImportWeightsArgs {
    pub spec: String,
    /// The state dict, saved with safetensors.torch.save_file.
    #[arg(long)]
    pub from: String,
    /// Key mapping: timm (timm's ResNet family), keras (se-compile's own names), auto.
    #[arg(long, value_enum, default_value = "auto")]
    pub map: MapArg,
    /// The checkpoint to write.
    #[arg(short, long)]
    pub output: String,
}

pub fn run(cx: &Ctx, a: ImportWeightsArgs) -> Result<(), u8> {
    let ImportWeightsArgs {
        spec,
        from,
        map,
        output,
    } = a;
    let out = PathBuf::from(output);
    check_parent(&out)?;
    let (src, _, vg) = cx.build_full(&spec, None)?;
    let from_path = Path::new(&from);
    if !from_path.is_file() {
        eprintln!("error: {from}: no such file");
        return Err(EXIT_USAGE);
    }
    let bytes = std::fs::read(from_path).map_err(|e| fail(format!("{from}: cannot read: {e}")))?;
    let map = match map {
        MapArg::Auto => Mapping::Auto,
        MapArg::Timm => Mapping::Timm,
        MapArg::Keras => Mapping::Keras,
    };
    let lowered = plan::lower(&vg, 0);
    let imported = import::import(&vg, &src, &lowered.params, &bytes, &from, map).map_err(fail)?;
    let names = lowered.params.into_iter().map(|p| p.name);
    let meta = [
        ("model".to_string(), vg.graph().model.clone()),
        ("imported_from".to_string(), from.to_string()),
        ("mapping".to_string(), imported.mapping.to_string()),
    ]
    .into_iter()
    .collect();
    se_compile::train::checkpoint::save_params(&out, names.zip(imported.values), &[], meta)
        .map_err(fail)?;
    eprintln!(
        "wrote {} ({} tensors from {from}, {} mapping)",
        out.display(),
        imported.count,
        imported.mapping
    );
    Ok(())
}
