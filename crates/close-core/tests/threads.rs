//! `close_core::threads::init` in a process of its own (it edits the environment).

#[test]
fn init_turns_candles_pool_off_and_keeps_values_already_set() {
    std::env::remove_var("CANDLE_NUM_THREADS");
    std::env::set_var("RAYON_NUM_THREADS", "3");
    close_core::threads::init();
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("1"));
    assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("3"));
    assert_eq!(candle_core::utils::get_num_threads(), 3);

    std::env::set_var("CANDLE_NUM_THREADS", "2");
    std::env::remove_var("RAYON_NUM_THREADS");
    close_core::threads::init();
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("2"));
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert_eq!(std::env::var("RAYON_NUM_THREADS"), Ok(n.to_string()));
}
