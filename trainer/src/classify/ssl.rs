//! Training `resnet-ssl-mlp`, both stages through the training driver ([`fit`]): SimCLR
//! pretraining of the ResNet on the training images (labels unused) in `RUN/simclr/`, then
//! the MLP on the frozen 32-dimensional embeddings of the fractured training images plus the
//! first `max_non_fractured` non-fractured ones, in `RUN/` itself.

use super::eval::fracture_probabilities;
use super::train::{
    build_model, class_weights, weighted_ce, ClassifyEpoch, TrainConfig, TrainSummary,
};
use crate::data::classify::{batch_tensor, load_planes, Augment, Plane, Sample};
use crate::models::resnet_ssl::{nt_xent, ResnetSslMlp};
use crate::models::Classifier;
use crate::run::fit::{Fitted, Loss, Plan, Task};
use crate::run::{fit, RunDir};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

fn model_batch(planes: &[&Plane], config: &TrainConfig, device: &Device) -> Tensor<4> {
    let (mean, std) = config.model.mean_std();
    batch_tensor(planes, mean, std, device)
}

/// The two-stage model inside a classifier (`ssl::train` is only called for it).
fn parts(model: &Classifier) -> &ResnetSslMlp {
    match model {
        Classifier::ResnetSslMlp(m) => m,
        _ => unreachable!("ssl::train is only called for resnet-ssl-mlp"),
    }
}

/// Embeddings of `planes` by the frozen backbone, `[n, embedding]` on `device`.
fn embed(
    model: &Classifier,
    planes: &[&Plane],
    config: &TrainConfig,
    device: &Device,
) -> Tensor<2> {
    let parts: Vec<Tensor<2>> = planes
        .chunks(config.eval_batch_size.max(1))
        .map(|c| {
            parts(model)
                .backbone
                .forward(model_batch(c, config, device))
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// What both stages may change on resume: the epoch counts, the checkpoint interval and the
/// session's limit.
fn resumable(c: &TrainConfig) -> TrainConfig {
    let mut r = c.clone();
    r.epochs = 0;
    r.ssl.epochs = 0;
    r.checkpoint_minutes = 0.0;
    r.session_step_limit = None;
    r
}

/// The batches of a shuffled epoch over `n` items, without a last batch of one (NT-Xent
/// needs negatives, batch norm two rows).
fn shuffled_batches(n: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    order
        .chunks(batch_size)
        .filter(|b| b.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

/// One SimCLR epoch: its loss and speed (no validation: the latest epoch is kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimclrEpoch {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean NT-Xent loss.
    pub loss: f64,
    /// Augmented views per second.
    pub images_per_second: f64,
}

/// Stage 1: SimCLR on the training images.
struct Simclr<'a> {
    config: &'a TrainConfig,
    train_set: &'a [(Sample, Plane)],
}

impl Task for Simclr<'_> {
    type Config = TrainConfig;
    type Model = Classifier;
    type Epoch = SimclrEpoch;
    const LOSS_PARTS: &'static [&'static str] = &["nt_xent"];

    fn config(&self) -> &TrainConfig {
        self.config
    }
    fn resumable(c: &TrainConfig) -> TrainConfig {
        resumable(c)
    }
    fn plan(&self) -> Plan {
        let c = self.config;
        Plan {
            epochs: c.ssl.epochs,
            seed: c.seed,
            checkpoint_minutes: c.checkpoint_minutes,
            step_limit: c.session_step_limit,
            log_every: c.log_every,
            ema: None,
        }
    }
    fn optimizer(&self) -> ModuleOptimizer {
        AdamConfig::new().init()
    }
    fn init(&self, ad: &Device) -> anyhow::Result<Classifier> {
        Ok(Classifier::new(self.config.model, 2, ad))
    }
    fn blank(&self, ad: &Device) -> Classifier {
        Classifier::new(self.config.model, 2, ad)
    }
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let c = self.config;
        shuffled_batches(
            self.train_set.len(),
            c.ssl.batch_size,
            c.seed ^ (0x5151 + epoch as u64),
        )
    }
    fn lr(&self, _: usize, _: usize, _: usize) -> f64 {
        self.config.ssl.lr
    }
    fn loss(
        &self,
        model: &Classifier,
        _epoch: usize,
        global: usize,
        batch: &[usize],
        ad: &Device,
    ) -> anyhow::Result<Loss> {
        let c = self.config;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            (c.seed ^ 0x5151) ^ ((global as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
        let s = c.image_size as usize;
        let mut views: Vec<Plane> = Vec::with_capacity(2 * batch.len());
        for _ in 0..2 {
            views.extend(
                batch
                    .iter()
                    .map(|&i| c.ssl.augment.apply(&self.train_set[i].1, s, &mut rng)),
            );
        }
        let refs: Vec<&Plane> = views.iter().collect();
        let m = parts(model);
        let z = m
            .projection
            .forward(m.backbone.forward(model_batch(&refs, c, ad)));
        let value = nt_xent(z, c.ssl.temperature);
        Ok(Loss::single(value, views.len()))
    }
    fn validate(
        &self,
        _model: &Classifier,
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
    ) -> anyhow::Result<(SimclrEpoch, Option<f64>)> {
        Ok((
            SimclrEpoch {
                epoch: epoch + 1,
                loss: mean_loss[0],
                images_per_second,
            },
            None,
        ))
    }
    fn describe(&self, e: &SimclrEpoch) -> String {
        format!("SimCLR epoch {}: loss {:.4}", e.epoch, e.loss)
    }
}

/// Stage 2: the MLP head on the frozen embeddings; the backbone gets no gradient.
struct MlpHead<'a> {
    config: &'a TrainConfig,
    /// The model SimCLR left (`RUN/simclr/last.safetensors`).
    pretrained: &'a std::path::Path,
    train_emb: Tensor<2>,
    labels: Vec<bool>,
    valid_emb: Tensor<2>,
    valid_set: &'a [(Sample, Plane)],
    class_w: [f32; 2],
}

impl Task for MlpHead<'_> {
    type Config = TrainConfig;
    type Model = Classifier;
    type Epoch = ClassifyEpoch;
    const LOSS_PARTS: &'static [&'static str] = &["loss"];

    fn config(&self) -> &TrainConfig {
        self.config
    }
    fn resumable(c: &TrainConfig) -> TrainConfig {
        resumable(c)
    }
    fn plan(&self) -> Plan {
        let c = self.config;
        Plan {
            epochs: c.epochs,
            seed: c.seed,
            checkpoint_minutes: c.checkpoint_minutes,
            step_limit: c.session_step_limit,
            log_every: 1,
            ema: None,
        }
    }
    fn optimizer(&self) -> ModuleOptimizer {
        AdamConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(self.config.ssl.mlp_l2)))
            .init()
    }
    fn init(&self, ad: &Device) -> anyhow::Result<Classifier> {
        build_model(self.config, Some(self.pretrained), ad)
    }
    fn blank(&self, ad: &Device) -> Classifier {
        Classifier::new(self.config.model, 2, ad)
    }
    fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let c = self.config;
        shuffled_batches(
            self.labels.len(),
            c.batch_size.max(2),
            c.seed ^ (0x4d4c50 + epoch as u64),
        )
    }
    fn lr(&self, _: usize, _: usize, _: usize) -> f64 {
        self.config.lr
    }
    fn loss(
        &self,
        model: &Classifier,
        _epoch: usize,
        _global: usize,
        batch: &[usize],
        ad: &Device,
    ) -> anyhow::Result<Loss> {
        let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [batch.len()]), ad);
        let x = self.train_emb.clone().select(0, idx);
        let labels: Vec<bool> = batch.iter().map(|&i| self.labels[i]).collect();
        let value = weighted_ce(parts(model).head.forward(x), &labels, self.class_w);
        Ok(Loss::single(value, batch.len()))
    }
    fn validate(
        &self,
        model: &Classifier,
        epoch: usize,
        mean_loss: &[f64],
        images_per_second: f64,
    ) -> anyhow::Result<(ClassifyEpoch, Option<f64>)> {
        let probs = fracture_probabilities(parts(model).head.forward(self.valid_emb.clone()));
        Ok(ClassifyEpoch::scored(
            epoch,
            mean_loss,
            images_per_second,
            &probs,
            self.valid_set,
        ))
    }
    fn describe(&self, e: &ClassifyEpoch) -> String {
        e.describe("MLP")
    }
}

/// Runs both stages; writes the same files as [`super::train::train`], SimCLR's run in
/// `RUN/simclr/` and its epoch losses in `RUN/ssl_loss.json`.
pub fn train(
    config: &TrainConfig,
    train_samples: &[Sample],
    valid_samples: &[Sample],
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<TrainSummary> {
    let ssl = &config.ssl;
    let s = config.image_size as usize;
    let (train_set, mut failures) =
        load_planes(train_samples, ssl.augment.cache_size(config.image_size));
    let (valid_set, vf) = load_planes(valid_samples, config.image_size);
    failures.extend(vf);
    anyhow::ensure!(
        train_set.len() >= 2,
        "SimCLR needs at least two training images"
    );

    let simclr_run = RunDir(run.0.join("simclr"));
    let stage1 = fit(
        &Simclr {
            config,
            train_set: &train_set,
        },
        &simclr_run,
        device,
        show_progress,
    )?;
    if !stage1.complete {
        let stopped = Fitted {
            state: Default::default(),
            complete: false,
            images_per_second: stage1.images_per_second,
        };
        return Ok(TrainSummary::of(&stopped, &failures));
    }
    std::fs::write(
        run.0.join("ssl_loss.json"),
        serde_json::to_string(
            &stage1
                .state
                .epochs
                .iter()
                .map(|e| e.loss)
                .collect::<Vec<_>>(),
        )?,
    )?;

    // Stage 2 reads the images as they are: the embeddings of the centred views, once.
    let frozen = build_model(config, Some(&simclr_run.last()), device)?;
    let identity = Augment {
        min_crop: 1.0,
        max_rotation_deg: 0.0,
        flip: 0.0,
        photometric: None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
    let mut chosen: Vec<usize> = (0..train_set.len())
        .filter(|&i| train_set[i].0.label)
        .collect();
    chosen.extend(
        (0..train_set.len())
            .filter(|&i| !train_set[i].0.label)
            .take(ssl.max_non_fractured),
    );
    let centre: Vec<Plane> = chosen
        .iter()
        .map(|&i| identity.apply(&train_set[i].1, s, &mut rng))
        .collect();
    let centre_refs: Vec<&Plane> = centre.iter().collect();
    let labels: Vec<bool> = chosen.iter().map(|&i| train_set[i].0.label).collect();
    let valid_refs: Vec<&Plane> = valid_set.iter().map(|(_, p)| p).collect();
    let ad = device.clone().autodiff();
    let pretrained = simclr_run.last();
    let task = MlpHead {
        config,
        pretrained: &pretrained,
        train_emb: Tensor::<2>::from_data(
            embed(&frozen, &centre_refs, config, device).into_data(),
            &ad,
        ),
        valid_emb: embed(&frozen, &valid_refs, config, device),
        class_w: class_weights(labels.iter().copied(), config.class_weighted_loss),
        labels,
        valid_set: &valid_set,
    };
    let stage2 = fit(&task, run, device, show_progress)?;
    Ok(TrainSummary::of(&stage2, &failures))
}
