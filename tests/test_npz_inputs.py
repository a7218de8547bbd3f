"""A ``.npz`` archive (``np.savez``) where a ``.npy`` array (``np.save``) is expected: the
retrieval evaluation tool and the metric's QB-Norm bank refuse it in one message naming the
file, its arrays and the line that converts it (before: a bare ``AttributeError: 'NpzFile'
object has no attribute 'ndim'``, for the bank after the whole test pass)."""
import subprocess
import sys

import numpy as np
import pytest

from stan_mm.errors import ConfigValueError
from stan_mm.evaluation import RetrievalRecallMetric
from stan_mm.evaluation.similarity import load_npy
from stan_mm.testing import load_script

SIM = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.3, 0.2, 0.7]], np.float32)


def test_load_npy_names_the_archive_and_the_way_out(tmp_path):
    path = str(tmp_path / 'sim.npz')
    np.savez(path, scores=SIM)
    with pytest.raises(ValueError, match=r"sim file '.*sim\.npz' is a \.npz archive "
                                         r"\(arrays: scores\), not one \.npy array"):
        load_npy(path, 'sim file')
    # the line the message gives, run as given, makes a .npy that loads
    with pytest.raises(ValueError) as info:
        load_npy(path, 'sim file')
    line = str(info.value).split('python -c ', 1)[1]
    subprocess.run(f'{sys.executable} -c {line}', shell=True, check=True, cwd=tmp_path)
    np.testing.assert_array_equal(load_npy(str(tmp_path / 'out.npy'), 'x'), SIM)
    np.save(tmp_path / 'plain.npy', SIM)                        # a .npy: the array itself
    np.testing.assert_array_equal(load_npy(str(tmp_path / 'plain.npy'), 'x', 'r'), SIM)


@pytest.mark.parametrize('which', ['--sim', '--text-to-video', '--qb-norm'])
def test_eval_retrieval_refuses_an_archive_in_one_line(tmp_path, capsys, which):
    files = {'--sim': SIM, '--text-to-video': np.arange(3), '--qb-norm': SIM}
    argv = []
    for flag, array in files.items():
        path = tmp_path / (flag.strip('-') + ('.npz' if flag == which else '.npy'))
        (np.savez if flag == which else np.save)(path, array)
        argv += [flag, str(path)]
    main = load_script('tools/analysis/eval_retrieval.py').main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'is a .npz archive (arrays: arr_0)' in err and str(tmp_path) in err
    assert 'Traceback' not in err


def test_metric_refuses_an_archive_bank_when_built(tmp_path):
    path = str(tmp_path / 'bank.npz')
    np.savez(path, SIM)
    with pytest.raises(ConfigValueError, match=r'qb_norm bank file .*bank\.npz.* is a \.npz'):
        RetrievalRecallMetric(qb_norm=dict(bank=path))
    np.save(tmp_path / 'bank1d.npy', SIM[0])
    with pytest.raises(ConfigValueError, match=r'has shape \(3,\); expected \[num_bank_texts'):
        RetrievalRecallMetric(qb_norm=dict(bank=str(tmp_path / 'bank1d.npy')))
    np.save(tmp_path / 'bank.npy', SIM)
    RetrievalRecallMetric(qb_norm=dict(bank=str(tmp_path / 'bank.npy')))     # accepted
