//! The only part of `top` that touches the terminal: a guard that puts it back however we
//! leave (return, error or panic), the thread that pulls snapshots, and the event loop.

use std::io::{self, IsTerminal, Stdout, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};

use super::app::{Action, App};
use super::source::{SnapshotSource, SourceError};
use super::{TopOptions, render};
use crate::error::Error;
use crate::model::Snapshot;

/// The saved stderr while the screen is ours, or -1; a static so the panic hook can put it back
/// before the panic message is printed.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
/// Whether we switched to the alternate screen (so `restore` knows what it may clear).
static IN_ALTERNATE: AtomicBool = AtomicBool::new(false);

/// Puts the terminal (and stderr) back. Safe to call twice (panic hook, then the guard): the
/// second call finds nothing left to undo.
fn restore() {
    // Each step is tried whatever the others do: a half-restored terminal beats an early return.
    if let Err(e) = terminal::disable_raw_mode() {
        log::debug!("leaving raw mode: {e}");
    }
    // Only once: a second `?1049l` on the main screen would restore an old cursor position and
    // make whatever prints next (the panic message) overwrite earlier lines.
    if IN_ALTERNATE.swap(false, Ordering::SeqCst) {
        // Blank the alternate screen first: tmux, when the window grew meanwhile, shows part of
        // the alternate grid above the restored screen; blank lines there beat stale rows.
        if let Err(e) = execute!(
            io::stdout(),
            terminal::Clear(terminal::ClearType::All),
            terminal::LeaveAlternateScreen,
            cursor::Show
        ) {
            log::debug!("leaving the alternate screen: {e}");
        }
    }
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is a descriptor we dup'ed and nobody else closes; dup2 onto 2 only
        // swaps what stderr points at.
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
    }
}

/// Owns the terminal for the session: raw mode, alternate screen, hidden cursor, stderr sent to
/// /dev/null (log lines and stray eprintln would tear the screen), and a panic hook that undoes
/// all of it before the panic message prints.
struct Guard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Guard {
    fn enter() -> io::Result<Guard> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        let devnull: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")?
            .into();
        // SAFETY: plain descriptor calls on fds we own; failure leaves stderr as it was.
        unsafe {
            let saved = libc::dup(2);
            if saved >= 0 {
                if libc::dup2(devnull.as_raw_fd(), 2) >= 0 {
                    SAVED_STDERR.store(saved, Ordering::SeqCst);
                } else {
                    libc::close(saved);
                }
            }
        }
        // Until the guard exists, a failing step undoes the earlier ones itself.
        terminal::enable_raw_mode().inspect_err(|_| restore())?;
        let mut out = io::stdout();
        IN_ALTERNATE.store(true, Ordering::SeqCst);
        execute!(out, terminal::EnterAlternateScreen, cursor::Hide).inspect_err(|_| restore())?;
        let terminal = Terminal::new(CrosstermBackend::new(out)).inspect_err(|_| restore())?;
        Ok(Guard { terminal })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Restoring goes on whatever happens: a terminal that cannot take our last bytes has
        // nobody left to show an error to.
        if let Err(e) = self.terminal.backend_mut().flush() {
            log::debug!("flushing the terminal: {e}");
        }
        restore();
        // Leave the hook we installed: it only restores, which is harmless once restored.
    }
}

type Msg = Result<Snapshot, SourceError>;

/// Pulls snapshots on a thread with its own runtime, so the caller may or may not be inside
/// tokio, and a slow source (an agent across the network) never freezes the keyboard. The
/// thread ends at its next send after the receiver is dropped.
fn spawn_source<S: SnapshotSource>(
    mut source: S,
    interval: Duration,
) -> Result<(Receiver<Msg>, JoinHandle<()>), Error> {
    let (tx, rx) = mpsc::channel::<Msg>();
    let handle = std::thread::Builder::new()
        .name("top-source".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    // Dropped only when the view has already quit: nobody left to tell.
                    let _ = tx.send(Err(SourceError::Other(Box::new(e))));
                    return;
                }
            };
            rt.block_on(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if tx.send(source.next().await).is_err() {
                        break;
                    }
                }
            });
        })
        .map_err(Error::SourceThread)?;
    Ok((rx, handle))
}

/// Runs the live view until the user quits. Owns the terminal for its whole duration and
/// restores it on return, on error and on panic.
pub fn run<S: SnapshotSource>(opts: TopOptions, source: S) -> Result<(), Error> {
    if opts.interval < Duration::from_millis(100) {
        return Err(Error::BadInterval(opts.interval));
    }
    let mut app = App::new(opts.interval, opts.filter, opts.sort.as_deref())?;
    require_terminal()?;
    let (rx, source_thread) = spawn_source(source, opts.interval)?;
    let mut guard = Guard::enter().map_err(Error::Terminal)?;
    let done = Arc::new(AtomicBool::new(false));
    stop_watchdog(Arc::clone(&done));
    let result = event_loop(&mut guard.terminal, &mut app, &rx);
    done.store(true, Ordering::SeqCst);
    drop(guard);
    if result.is_err() && matches!(rx.try_recv(), Err(TryRecvError::Disconnected)) {
        // The source thread is gone (or going): wait for it so its panic message is printed
        // whole before our caller prints anything. A live thread is left to end at its next
        // send, which it does within one interval now that `rx` is dropped.
        if source_thread.join().is_err() {
            return Err(Error::SourcePanicked);
        }
    }
    result
}

/// How long a stop signal may wait for the event loop before the process ends without it.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Ends the process when a stop signal has not ended the view within [`STOP_GRACE`].
///
/// Once its terminal hangs up (a closed tmux or ssh session), crossterm 0.29 never returns from
/// `event::poll`: its read loop waits for `WouldBlock`, and a hung-up tty answers every read with
/// EOF or EIO at once. The loop below then never sees the SIGHUP flag and the view spun at full
/// CPU forever. Nothing is left to draw on; the terminal is put back as far as it still exists.
fn stop_watchdog(done: Arc<AtomicBool>) {
    let watch = move || {
        let mut asked: Option<Instant> = None;
        while !done.load(Ordering::SeqCst) {
            if crate::shutdown::requested() {
                let since = *asked.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOP_GRACE {
                    log::debug!("the view did not stop on its signal; ending the process");
                    restore();
                    std::process::exit(0);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("top-stop".into())
        .spawn(watch)
    {
        log::debug!("no stop watchdog for top: {e}");
    }
}

fn event_loop(
    term: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    rx: &Receiver<Msg>,
) -> Result<(), Error> {
    let mut dirty = true;
    loop {
        // SIGTERM or SIGHUP (a closed terminal) end the view like `q` does.
        if crate::shutdown::requested() {
            return Ok(());
        }
        loop {
            match rx.try_recv() {
                Ok(Ok(s)) => app.on_snapshot(s),
                Ok(Err(e)) => app.on_error(e.one_line()),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err(Error::SourceEnded);
                }
            }
            dirty = true;
        }
        if dirty {
            let size = term.size().map_err(Error::Terminal)?;
            app.set_page(render::table_rows(
                ratatui::layout::Rect::new(0, 0, size.width, size.height),
                app,
            ));
            term.draw(|f| render::render(f, app))
                .map_err(Error::Terminal)?;
            dirty = false;
        }
        // Wake at least every 100ms to pick up snapshots; one event per pass so a key press is
        // drawn at once.
        if event::poll(Duration::from_millis(100)).map_err(Error::Terminal)? {
            match event::read().map_err(Error::Terminal)? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    if app.on_key(k) == Action::Quit {
                        return Ok(());
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

/// Fails with [`Error::NotATerminal`] unless stdout is a terminal: callers check before
/// attaching anything or starting a lab.
pub fn require_terminal() -> Result<(), Error> {
    if io::stdout().is_terminal() {
        Ok(())
    } else {
        Err(Error::NotATerminal)
    }
}
