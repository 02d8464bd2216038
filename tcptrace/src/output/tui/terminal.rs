//! The real terminal, held the way bpftop holds it: raw mode and the alternate screen for as
//! long as a [`Screen`] lives, given back when it is dropped, on a panic (a hook restores the
//! terminal before the message is printed) and so on any way out of `top`.

use std::io::{self, Stdout};
use std::sync::Once;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, execute, terminal};

/// The terminal in raw mode on the alternate screen; restored on drop.
pub struct Screen {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

/// Puts the terminal back as it was: normal mode, main screen, cursor shown. Safe to call
/// more than once.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

static HOOK: Once = Once::new();

/// Fails with one clear line when stdout is not a terminal (call it before loading anything).
pub fn require() -> anyhow::Result<()> {
    if !io::IsTerminal::is_terminal(&io::stdout()) {
        anyhow::bail!(
            "tcptrace top draws on a terminal and stdout is not one (for a pipe or a file use `tcptrace tail`, `life` or `doctor`)"
        );
    }
    Ok(())
}

impl Screen {
    /// Takes the terminal; fails with one clear line when stdout is not a terminal.
    pub fn take() -> anyhow::Result<Self> {
        require()?;
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()
            .map_err(|e| anyhow::anyhow!("cannot put the terminal in raw mode: {e}"))?;
        // From here on, Drop restores whatever happens.
        let mut screen = Self {
            terminal: Terminal::new(CrosstermBackend::new(io::stdout()))?,
        };
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        screen.terminal.clear()?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
