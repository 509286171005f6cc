#ifndef FTM_DETAIL_CONFIG_HPP
#define FTM_DETAIL_CONFIG_HPP

/// \file
/// Build switches. `FTM_CHECKED` turns on the run-time checks of the open/close
/// discipline (use after close, use after the transaction ended); it defaults to on
/// unless `NDEBUG` is defined. Define it to 0 or 1 to choose explicitly.

#ifndef FTM_CHECKED
#ifdef NDEBUG
#define FTM_CHECKED 0
#else
#define FTM_CHECKED 1
#endif
#endif

#endif  // FTM_DETAIL_CONFIG_HPP
