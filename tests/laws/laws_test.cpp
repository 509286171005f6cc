// The engine laws (laws.hpp) on every engine ftm ships: one line per kind of engine.
#include "laws.hpp"

#include <ftm/engines/reference.hpp>

FTM_FORK_SHARED_ENGINE_LAWS(FTM_TEST_ENGINES);
FTM_ENGINE_LAWS(ftm::engines::reference);
