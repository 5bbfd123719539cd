//! Training `resnet-ssl-mlp`: SimCLR pretraining of the ResNet on the training images
//! (labels unused), then the MLP on the frozen 32-dimensional embeddings of the fractured
//! training images plus the first `max_non_fractured` non-fractured ones.

use super::train::{
    auc_of, class_weights, fracture_probabilities, weighted_ce, TrainConfig, TrainSummary,
};
use crate::data::classify::{batch_tensor, load_planes, Augment, Plane, Sample};
use crate::models::resnet_ssl::{nt_xent, ResnetSslMlp};
use crate::models::Classifier;
use crate::run::{save_checkpoint, say, RunDir};
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Write as _;
use std::time::Instant;

fn model_batch(planes: &[&Plane], config: &TrainConfig, device: &Device) -> Tensor<4> {
    let (mean, std) = config.model.mean_std();
    batch_tensor(planes, mean, std, device)
}

/// Embeddings of `planes` by the frozen backbone, `[n, embedding]` on `device`.
fn embed(
    model: &ResnetSslMlp,
    planes: &[&Plane],
    config: &TrainConfig,
    device: &Device,
) -> Tensor<2> {
    let parts: Vec<Tensor<2>> = planes
        .chunks(config.eval_batch_size.max(1))
        .map(|c| model.backbone.forward(model_batch(c, config, device)))
        .collect();
    Tensor::cat(parts, 0)
}

/// Runs both stages; writes the same files as [`super::train::train`].
pub fn train(
    config: &TrainConfig,
    train_samples: &[Sample],
    valid_samples: &[Sample],
    run: &RunDir,
    device: &Device,
    show_progress: bool,
) -> anyhow::Result<TrainSummary> {
    let ssl = &config.ssl;
    std::fs::create_dir_all(&run.0)?;
    std::fs::write(run.config(), serde_json::to_string_pretty(config)?)?;
    device.seed(config.seed);
    let s = config.image_size as usize;
    let cache = ssl.augment.cache_size(config.image_size);
    let (train_set, mut failures) = load_planes(train_samples, cache);
    let (valid_set, vf) = load_planes(valid_samples, config.image_size);
    failures.extend(vf);
    anyhow::ensure!(
        train_set.len() >= 2,
        "SimCLR needs at least two training images"
    );

    let ad = device.clone().autodiff();
    let Classifier::ResnetSslMlp(mut model) = Classifier::new(config.model, 2, &ad) else {
        unreachable!("ssl::train is only called for resnet-ssl-mlp")
    };
    let mut log = std::fs::File::create(run.log())?;
    writeln!(log, "stage,epoch,step,images,loss,images_per_second")?;
    let started = Instant::now();
    let mut images_seen = 0usize;

    // Stage 1: SimCLR.
    let mut optim = AdamConfig::new().init();
    let steps = train_set.len().div_ceil(ssl.batch_size) * ssl.epochs;
    let bar = if show_progress {
        indicatif::ProgressBar::new(steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut ssl_loss = Vec::new();
    for epoch in 0..ssl.epochs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ (0x5151 + epoch as u64));
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let t0 = Instant::now();
        let (mut sum, mut n, mut seen) = (0.0, 0usize, 0usize);
        for (step, batch) in order.chunks(ssl.batch_size).enumerate() {
            if batch.len() < 2 {
                continue; // NT-Xent needs negatives.
            }
            let mut views: Vec<Plane> = Vec::with_capacity(2 * batch.len());
            for _ in 0..2 {
                views.extend(
                    batch
                        .iter()
                        .map(|&i| ssl.augment.apply(&train_set[i].1, s, &mut rng)),
                );
            }
            let refs: Vec<&Plane> = views.iter().collect();
            let z = model
                .projection
                .forward(model.backbone.forward(model_batch(&refs, config, &ad)));
            let loss = nt_xent(z, ssl.temperature);
            let v = loss.clone().into_scalar::<f32>() as f64;
            anyhow::ensure!(
                v.is_finite(),
                "SimCLR loss became {v}; lower the SSL learning rate"
            );
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(ssl.lr, model, grads);
            sum += v;
            n += 1;
            seen += batch.len();
            images_seen += 2 * batch.len();
            let ips = 2.0 * seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            if (step + 1) % config.log_every.max(1) == 0 {
                writeln!(
                    log,
                    "simclr,{},{},{},{:.6},{:.2}",
                    epoch + 1,
                    step + 1,
                    images_seen,
                    sum / n as f64,
                    ips
                )?;
            }
            bar.set_message(format!(
                "SimCLR epoch {} loss {:.4} {:.1} views/s",
                epoch + 1,
                sum / n as f64,
                ips
            ));
            bar.inc(1);
        }
        ssl_loss.push(sum / n.max(1) as f64);
        say(
            &bar,
            format!(
                "SimCLR epoch {}: loss {:.4}",
                epoch + 1,
                sum / n.max(1) as f64
            ),
        );
    }
    bar.finish_and_clear();

    // Stage 2: the MLP on frozen embeddings.
    let frozen = model.valid();
    let identity = Augment {
        min_crop: 1.0,
        max_rotation_deg: 0.0,
        flip: 0.0,
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
    let train_emb = embed(&frozen, &centre_refs, config, device);
    let valid_refs: Vec<&Plane> = valid_set.iter().map(|(_, p)| p).collect();
    let valid_emb = embed(&frozen, &valid_refs, config, device);
    let train_emb = Tensor::<2>::from_data(train_emb.into_data(), &ad);

    let class_w = class_weights(labels.iter().copied(), config.class_weighted_loss);
    let mut head = model.head.clone();
    let mut head_optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(ssl.mlp_l2)))
        .init();
    let (mut best_head, mut best_auc, mut best_epoch) = (head.valid(), None::<f64>, 0);
    let mut epoch_loss = Vec::new();
    let mut epoch_auc = Vec::new();
    for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(&mut rng);
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in order.chunks(config.batch_size.max(2)) {
            if batch.len() < 2 {
                continue; // batch norm needs two rows
            }
            let idx: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            let idx =
                Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [batch.len()]), &ad);
            let x = train_emb.clone().select(0, idx);
            let batch_labels: Vec<bool> = batch.iter().map(|&i| labels[i]).collect();
            let loss = weighted_ce(head.forward(x), &batch_labels, class_w);
            sum += loss.clone().into_scalar::<f32>() as f64;
            n += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = head_optim.step(config.lr, head, grads);
        }
        let probs = fracture_probabilities(head.valid().forward(valid_emb.clone()));
        let auc = auc_of(&probs, &valid_set);
        epoch_loss.push(sum / n.max(1) as f64);
        epoch_auc.push(auc);
        writeln!(
            log,
            "mlp,{},{},{},{:.6},",
            epoch + 1,
            n,
            labels.len() * (epoch + 1),
            sum / n.max(1) as f64
        )?;
        if auc.is_some() && (best_auc.is_none() || auc > best_auc) {
            best_auc = auc;
            best_epoch = epoch + 1;
            best_head = head.valid();
        }
    }
    let last = Classifier::ResnetSslMlp(ResnetSslMlp {
        backbone: frozen.backbone.clone(),
        projection: frozen.projection.clone(),
        head: head.valid(),
    });
    save_checkpoint(&last, &run.last())?;
    let best = Classifier::ResnetSslMlp(ResnetSslMlp {
        backbone: frozen.backbone,
        projection: frozen.projection,
        head: best_head,
    });
    save_checkpoint(&best, &run.best())?;
    std::fs::write(
        run.0.join("ssl_loss.json"),
        serde_json::to_string(&ssl_loss)?,
    )?;
    Ok(TrainSummary {
        best_epoch,
        best_valid_roc_auc: best_auc,
        epoch_loss,
        epoch_valid_roc_auc: epoch_auc,
        images_per_second: images_seen as f64 / started.elapsed().as_secs_f64().max(1e-9),
        load_failures: failures
            .iter()
            .map(|f| format!("{}: {}", f.id, f.message))
            .collect(),
        complete: true,
    })
}
