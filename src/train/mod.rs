pub mod callbacks;
pub mod checkpoint;
pub mod data;
pub mod plot;
pub mod run;
pub mod shards;
pub mod tensorboard;
