//! Weights (and optimizer state) as safetensors, named like Keras weights
//! (`conv2d_3/kernel`, `batch_normalization/moving_mean`), written atomically.

use crate::lower::model::Model;
use crate::util::atomic::write_atomic;
use std::collections::HashMap;
use std::path::Path;

pub const OPT_M: &str = "optimizer/m/";
pub const OPT_V: &str = "optimizer/v/";

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves every parameter, plus extra named tensors (optimizer moments) and metadata.
pub fn save(
    path: &Path,
    net: &dyn Model,
    extra: &[(String, Vec<f32>)],
    meta: HashMap<String, String>,
) -> Result<(), String> {
    let params = net.param_info().into_iter().map(|p| p.name);
    save_params(path, params.zip(net.param_values()), extra, meta)
}

/// `save` for parameters given by name and values, in the network's order.
pub fn save_params(
    path: &Path,
    params: impl Iterator<Item = (String, Vec<f32>)>,
    extra: &[(String, Vec<f32>)],
    meta: HashMap<String, String>,
) -> Result<(), String> {
    let f32 = safetensors::Dtype::F32;
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = params
        .map(|(n, v)| (n, f32, vec![v.len()], to_bytes(&v)))
        .chain(
            extra
                .iter()
                .map(|(n, v)| (n.clone(), f32, vec![v.len()], to_bytes(v))),
        )
        .collect();
    let bytes = serialize(&owned, meta).map_err(|e| format!("{}: {e}", path.display()))?;
    write_atomic(path, &bytes).map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// safetensors bytes of (name, dtype, shape, little-endian data) tensors with metadata.
pub fn serialize(
    tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    safetensors::serialize(views, &Some(meta)).map_err(|e| format!("{e:?}"))
}

/// A loaded checkpoint: tensors by name and the metadata.
pub struct Loaded {
    pub tensors: HashMap<String, Vec<f32>>,
    pub meta: HashMap<String, String>,
}

pub fn read(path: &Path) -> Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: not a safetensors file: {e:?}", path.display()))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("{}: {e:?}", path.display()))?;
    let mut tensors = HashMap::new();
    for name in st.names() {
        let t = st
            .tensor(name)
            .map_err(|e| format!("{}: {e:?}", path.display()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "{}: tensor `{name}` is {:?}, expected F32",
                path.display(),
                t.dtype()
            ));
        }
        tensors.insert(
            name.clone(),
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    Ok(Loaded {
        tensors,
        meta: md.metadata().clone().unwrap_or_default(),
    })
}

/// Loads weights into `net` by name; any missing or mis-sized tensor is an error that names it.
pub fn load_into(net: &mut dyn Model, ck: &Loaded, path: &Path) -> Result<(), String> {
    for (i, p) in net.param_info().iter().enumerate() {
        let Some(v) = ck.tensors.get(&p.name) else {
            return Err(format!(
                "{}: has no tensor `{}`; was it saved from a different spec?",
                path.display(),
                p.name
            ));
        };
        if v.len() != p.len {
            return Err(format!(
                "{}: tensor `{}` has {} values but the spec's layer needs {}; the weights belong to a different spec",
                path.display(),
                p.name,
                v.len(),
                p.len
            ));
        }
        net.set_param(i, v.clone());
    }
    Ok(())
}
