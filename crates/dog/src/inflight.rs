//! A window of object requests in flight: each job runs as its own task (so it keeps going
//! while the caller reads stdin or writes stdout), at most `max` at once, results collected
//! in submission order. Dropping the window aborts whatever is still running.
//! Owns: task spawning and ordering. Never: protocol details.

use crate::error::{Fail, Res, EXIT_SYSFAIL};
use std::collections::VecDeque;
use std::future::Future;
use tokio::task::JoinHandle;

pub struct Window<T> {
    max: usize,
    jobs: VecDeque<JoinHandle<Res<T>>>,
}

impl<T: Send + 'static> Window<T> {
    pub fn new(max: usize) -> Window<T> {
        Window {
            max: max.max(1),
            jobs: VecDeque::new(),
        }
    }

    /// Starts `job`; when the window is full, first waits for the oldest job and returns
    /// its result.
    pub async fn push<F>(&mut self, job: F) -> Option<Res<T>>
    where
        F: Future<Output = Res<T>> + Send + 'static,
    {
        let done = if self.jobs.len() >= self.max {
            self.next().await
        } else {
            None
        };
        self.jobs.push_back(tokio::spawn(job));
        done
    }

    /// The oldest job's result; `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Res<T>> {
        let job = self.jobs.pop_front()?;
        Some(match job.await {
            Ok(r) => r,
            Err(e) => Err(Fail::new(EXIT_SYSFAIL, format!("internal error: {e}"))),
        })
    }
}

impl<T> Drop for Window<T> {
    fn drop(&mut self) {
        for j in &self.jobs {
            j.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn ordered_and_bounded() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut w = Window::new(3);
        let mut out = Vec::new();
        for i in 0..10u64 {
            let (running, peak) = (running.clone(), peak.clone());
            let job = async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10 - i)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(i)
            };
            if let Some(r) = w.push(job).await {
                out.push(r.unwrap());
            }
        }
        while let Some(r) = w.next().await {
            out.push(r.unwrap());
        }
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }
}
