//! The model zoo in `models/`, built into the binary so `se-compile summary se_resnet50` works
//! from any directory.

pub const MODELS: &[(&str, &str)] = &[
    (
        "models/se_block.yaml",
        include_str!("../models/se_block.yaml"),
    ),
    (
        "models/se_resnet50.yaml",
        include_str!("../models/se_resnet50.yaml"),
    ),
    (
        "models/se_resnet50.se",
        include_str!("../models/se_resnet50.se"),
    ),
    (
        "models/resnet50.yaml",
        include_str!("../models/resnet50.yaml"),
    ),
    (
        "models/se_resnext50_32x4d.yaml",
        include_str!("../models/se_resnext50_32x4d.yaml"),
    ),
    (
        "models/se_resnet50_timm.yaml",
        include_str!("../models/se_resnet50_timm.yaml"),
    ),
    (
        "models/se_inception.yaml",
        include_str!("../models/se_inception.yaml"),
    ),
    (
        "models/se_resnet_mini.yaml",
        include_str!("../models/se_resnet_mini.yaml"),
    ),
];

/// `se_resnet50`, `se_resnet50.se` or `models/se_resnet50.yaml` → (display path, text).
pub fn find(name: &str) -> Option<(&'static str, &'static str)> {
    let name = name.trim_start_matches("./");
    let name = name.strip_prefix("models/").unwrap_or(name);
    MODELS.iter().copied().find(|(path, _)| {
        let file = &path["models/".len()..];
        file == name || file.strip_suffix(".yaml") == Some(name)
    })
}
