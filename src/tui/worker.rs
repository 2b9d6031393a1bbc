//! The explorer's attribution thread: it owns its own [`Explainer`] (attention capture,
//! occluder and autograd engines, created on first use and kept), takes one [`Job`] at a time
//! and sends back the records, so a gradient method's seconds never freeze the screen. The UI
//! reads progress and cancels through the job's [`Watch`]. The model is shared, read-only
//! (llama.cpp models are safe to use from several threads; each thread has its own contexts).

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use crate::attribution::Watch;
use crate::engine::{ContextOptions, Model};
use crate::error::{Error, Result};
use crate::record::AttributionRecord;
use crate::workbench::explain::{Explainer, Job};

/// What a finished job sends back.
pub(crate) type Reply = Result<Vec<AttributionRecord>>;

/// The thread and its two channels. Dropping it cancels the running job and waits for the
/// thread to stop (at the job's next unit boundary).
pub(crate) struct Worker {
    jobs: Option<Sender<Job>>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
    /// The watch of the job in flight.
    running: Option<Watch>,
}

impl Worker {
    pub(crate) fn spawn(model: Arc<Model>, ctx: ContextOptions) -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, replies) = mpsc::channel::<Reply>();
        let handle = std::thread::Builder::new()
            .name("ntv-attribution".into())
            .spawn(move || {
                let mut explainer = Explainer::new(&model, &ctx);
                for job in inbox {
                    if outbox.send(job.run(&mut explainer)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::runtime(format!("cannot start the attribution thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            replies,
            handle: Some(handle),
            running: None,
        })
    }

    /// Start `job` (its `opts.watch` is the handle to follow it). Refused while one runs.
    pub(crate) fn start(&mut self, job: Job) -> Result<()> {
        if self.running.is_some() {
            return Err(Error::runtime("an attribution is already running"));
        }
        let watch = job.opts.watch.clone();
        self.jobs
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| Error::runtime("the attribution thread has stopped"))?;
        self.running = Some(watch);
        Ok(())
    }

    /// The job in flight, if any.
    pub(crate) fn running(&self) -> Option<&Watch> {
        self.running.as_ref()
    }

    /// The finished job's reply, without waiting.
    pub(crate) fn try_reply(&mut self) -> Option<Reply> {
        self.running.as_ref()?;
        let reply = match self.replies.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(self.died()),
        };
        self.running = None;
        Some(reply)
    }

    /// Wait for the job in flight (tests, and quitting).
    pub(crate) fn wait(&mut self) -> Option<Reply> {
        self.running.as_ref()?;
        let reply = self.replies.recv().unwrap_or_else(|_| Err(self.died()));
        self.running = None;
        Some(reply)
    }

    /// The thread ended without replying: it panicked (its message went to stderr).
    fn died(&mut self) -> Error {
        self.jobs = None;
        Error::runtime("the attribution thread failed (this is a bug in ntv)")
    }

    /// Whether the thread can take jobs.
    pub(crate) fn alive(&self) -> bool {
        self.jobs.is_some()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(w) = &self.running {
            w.cancel();
        }
        self.jobs = None; // the thread's loop ends with its channel
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
